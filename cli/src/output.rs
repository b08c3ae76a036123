//! Plain-text tables and number formatting for the `visage` tool.

use std::fmt::Write as _;

/// A table printed with aligned columns; numeric columns align right.
pub struct Table {
    headers: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers; `right[i]` aligns column `i` right.
    pub fn new(headers: &[&'static str], right: &[bool]) -> Table {
        Table {
            headers: headers.to_vec(),
            right: right.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Add a row (as many cells as headers).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row, headers first.
    pub fn render(&self) -> String {
        let mut width: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if i < width.len() {
                    width[i] = width[i].max(c.chars().count());
                }
            }
        }
        let mut out = String::new();
        let mut line = |cells: Vec<&str>| {
            let mut l = String::new();
            for (i, c) in cells.iter().enumerate() {
                let w = width.get(i).copied().unwrap_or(0);
                let pad = w.saturating_sub(c.chars().count());
                let last = i + 1 == cells.len();
                if self.right.get(i).copied().unwrap_or(false) {
                    l.push_str(&" ".repeat(pad));
                    l.push_str(c);
                } else {
                    l.push_str(c);
                    if !last {
                        l.push_str(&" ".repeat(pad));
                    }
                }
                if !last {
                    l.push_str("  ");
                }
            }
            let _ = writeln!(out, "{}", l.trim_end());
        };
        line(self.headers.clone());
        for r in &self.rows {
            line(r.iter().map(String::as_str).collect());
        }
        out
    }
}

/// `1234567` as `1,234,567`.
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in binary units (`5.2 MiB`).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A distance with enough digits to compare neighbours.
pub fn distance(d: f32) -> String {
    format!("{d:.6}")
}

/// A probability, or `-` when there is none.
pub fn probability(p: Option<f32>) -> String {
    p.map_or("-".into(), |p| format!("{p:.4}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(5 * 1024 * 1024 + 200 * 1024), "5.2 MiB");
    }

    #[test]
    fn aligns_columns() {
        let mut t = Table::new(&["ID", "SUBJECT"], &[true, false]);
        t.row(vec!["7".into(), "emp-1".into()]);
        t.row(vec!["1234".into(), "x".into()]);
        assert_eq!(t.render(), "  ID  SUBJECT\n   7  emp-1\n1234  x\n");
    }
}
