//! `.npy` files for the benchmarks: reading little-endian C-order 2-D arrays of
//! `float32` (galleries, probes) and `int64`, writing `float32` and `int64`.
//!
//! The format (NumPy's `numpy.lib.format`): the magic `\x93NUMPY`, a major and
//! a minor version byte, the header length (little-endian `u16` in version 1.0,
//! `u32` in versions 2.0 and 3.0), then the header: an ASCII Python dict literal
//! such as `{'descr': '<f4', 'fortran_order': False, 'shape': (1000, 128), }`,
//! padded with spaces and ended by a newline. The data follows at once.
//!
//! The reader is deliberately narrow: anything it does not take (another dtype
//! or byte order, Fortran order, another number of dimensions, a file shorter or
//! longer than its header promises) is refused with an error that names the file
//! and says how to convert it with NumPy.

use std::fmt;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// What is wrong with an `.npy` file, with the file's path.
#[derive(Debug)]
pub struct NpyError {
    path: PathBuf,
    message: String,
}

impl fmt::Display for NpyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for NpyError {}

fn err(path: &Path, message: impl Into<String>) -> NpyError {
    NpyError {
        path: path.to_owned(),
        message: message.into(),
    }
}

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// Longest header accepted (NumPy itself refuses headers over 10,000 bytes by default).
const MAX_HEADER: usize = 1 << 16;

/// A row-major 2-D array.
#[derive(Debug, Clone, PartialEq)]
pub struct Array2<T> {
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// `rows × cols` values, row after row.
    pub data: Vec<T>,
}

impl<T> Array2<T> {
    /// Row `i`.
    pub fn row(&self, i: usize) -> &[T] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

/// The parsed header of an `.npy` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Format version (major, minor).
    pub version: (u8, u8),
    /// The dtype string, e.g. `<f4`.
    pub descr: String,
    /// Column-major data.
    pub fortran_order: bool,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Byte offset of the first data byte.
    pub data_offset: usize,
}

/// A Python literal, as far as `.npy` headers use them.
#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Str(String),
    Bool(bool),
    Int(usize),
    Tuple(Vec<Lit>),
    List(Vec<Lit>),
    Dict(Vec<(String, Lit)>),
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&mut self) -> Option<u8> {
        while self
            .s
            .get(self.pos)
            .is_some_and(|c| c.is_ascii_whitespace())
        {
            self.pos += 1;
        }
        self.s.get(self.pos).copied()
    }

    /// Items of a tuple or dict up to `close`, each read by `item`.
    fn items<T>(
        &mut self,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Result<T, String>,
    ) -> Result<Vec<T>, String> {
        let mut out = Vec::new();
        loop {
            if self.peek() == Some(close) {
                self.pos += 1;
                return Ok(out);
            }
            out.push(item(self)?);
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(c) if c == close => {}
                Some(c) => {
                    return Err(format!(
                        "expected ',' or '{}' at header byte {}, found '{}'",
                        close as char, self.pos, c as char
                    ));
                }
                None => return Err(format!("header ends before its '{}'", close as char)),
            }
        }
    }

    fn value(&mut self) -> Result<Lit, String> {
        match self.peek() {
            Some(q @ (b'\'' | b'"')) => {
                self.pos += 1;
                let start = self.pos;
                let len = self.s[start..]
                    .iter()
                    .position(|&c| c == q)
                    .ok_or("unterminated string in the header")?;
                self.pos = start + len + 1;
                Ok(Lit::Str(
                    String::from_utf8_lossy(&self.s[start..start + len]).into_owned(),
                ))
            }
            Some(b'(') => {
                self.pos += 1;
                Ok(Lit::Tuple(self.items(b')', |p| p.value())?))
            }
            // Lists appear only in structured dtypes, which are refused later.
            Some(b'[') => {
                self.pos += 1;
                Ok(Lit::List(self.items(b']', |p| p.value())?))
            }
            Some(b'{') => {
                self.pos += 1;
                Ok(Lit::Dict(self.items(b'}', |p| {
                    let Lit::Str(key) = p.value()? else {
                        return Err("a header key is not a string".to_string());
                    };
                    if p.peek() != Some(b':') {
                        return Err(format!("expected ':' after header key {key:?}"));
                    }
                    p.pos += 1;
                    Ok((key, p.value()?))
                })?))
            }
            Some(c) if c.is_ascii_digit() => {
                let start = self.pos;
                while self.s.get(self.pos).is_some_and(|c| c.is_ascii_digit()) {
                    self.pos += 1;
                }
                let digits = String::from_utf8_lossy(&self.s[start..self.pos]).into_owned();
                // Python 2 wrote long integers with an `L` suffix.
                if self.s.get(self.pos) == Some(&b'L') {
                    self.pos += 1;
                }
                digits
                    .parse()
                    .map(Lit::Int)
                    .map_err(|_| format!("dimension {digits} is too large"))
            }
            Some(_) => {
                for (word, v) in [("True", true), ("False", false)] {
                    if self.s[self.pos..].starts_with(word.as_bytes()) {
                        self.pos += word.len();
                        return Ok(Lit::Bool(v));
                    }
                }
                Err(format!("unexpected text at header byte {}", self.pos))
            }
            None => Err("the header ends early".into()),
        }
    }
}

/// Parse the header dict (the text after the length field).
fn parse_dict(text: &[u8]) -> Result<(String, bool, Vec<usize>), String> {
    let mut p = Parser { s: text, pos: 0 };
    let Lit::Dict(items) = p.value()? else {
        return Err("the header is not a dictionary".into());
    };
    if p.peek().is_some() {
        return Err(format!(
            "text after the header dictionary at byte {}",
            p.pos
        ));
    }
    let get = |k: &str| items.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    let descr = match get("descr") {
        Some(Lit::Str(d)) => d.clone(),
        Some(_) => {
            return Err(
                "'descr' is not a plain dtype (structured arrays are not supported)".into(),
            );
        }
        None => return Err("the header has no 'descr'".into()),
    };
    let fortran_order = match get("fortran_order") {
        Some(Lit::Bool(b)) => *b,
        Some(_) => return Err("'fortran_order' is not True or False".into()),
        None => return Err("the header has no 'fortran_order'".into()),
    };
    let shape = match get("shape") {
        Some(Lit::Tuple(dims)) => dims
            .iter()
            .map(|d| match d {
                Lit::Int(n) => Ok(*n),
                _ => Err("'shape' holds something other than integers".to_string()),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err("'shape' is not a tuple".into()),
        None => return Err("the header has no 'shape'".into()),
    };
    Ok((descr, fortran_order, shape))
}

/// Read the preamble and header; `r` is left at the first data byte.
pub fn read_header(path: &Path, r: &mut impl Read) -> Result<Header, NpyError> {
    let mut pre = [0u8; 8];
    r.read_exact(&mut pre)
        .map_err(|e| err(path, format!("cannot read the .npy preamble: {e}")))?;
    if &pre[..6] != MAGIC {
        return Err(err(path, "not an .npy file (no \\x93NUMPY magic)"));
    }
    let version = (pre[6], pre[7]);
    let (len, offset) = match version {
        (1, 0) => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b)
                .map_err(|e| err(path, format!("truncated header: {e}")))?;
            (u16::from_le_bytes(b) as usize, 10)
        }
        // 3.0 differs from 2.0 only in allowing UTF-8 in the header.
        (2, 0) | (3, 0) => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b)
                .map_err(|e| err(path, format!("truncated header: {e}")))?;
            (u32::from_le_bytes(b) as usize, 12)
        }
        (major, minor) => {
            return Err(err(
                path,
                format!(
                    ".npy format version {major}.{minor} is not supported (1.0, 2.0 and 3.0 are)"
                ),
            ));
        }
    };
    if len > MAX_HEADER {
        return Err(err(
            path,
            format!("a header of {len} bytes is implausibly large"),
        ));
    }
    let mut text = vec![0u8; len];
    r.read_exact(&mut text)
        .map_err(|e| err(path, format!("truncated header: {e}")))?;
    let (descr, fortran_order, shape) = parse_dict(&text).map_err(|m| err(path, m))?;
    Ok(Header {
        version,
        descr,
        fortran_order,
        shape,
        data_offset: offset + len,
    })
}

/// Element types the reader and writer handle.
trait Element: bytemuck::Pod + Default {
    const DESCR: &'static str;
    const NAME: &'static str;
    /// The value from its little-endian representation read as native bytes.
    fn decode_le(self) -> Self;
    fn encode_le(self) -> [u8; 8];
}

impl Element for f32 {
    const DESCR: &'static str = "<f4";
    const NAME: &'static str = "float32";
    fn decode_le(self) -> Self {
        f32::from_bits(u32::from_le(self.to_bits()))
    }
    fn encode_le(self) -> [u8; 8] {
        let b = self.to_le_bytes();
        [b[0], b[1], b[2], b[3], 0, 0, 0, 0]
    }
}

impl Element for i64 {
    const DESCR: &'static str = "<i8";
    const NAME: &'static str = "int64";
    fn decode_le(self) -> Self {
        i64::from_le(self)
    }
    fn encode_le(self) -> [u8; 8] {
        self.to_le_bytes()
    }
}

/// How to convert an array of another dtype with NumPy.
fn dtype_hint<T: Element>(descr: &str) -> String {
    let what = match descr {
        "<f4" | "=f4" => "float32".to_string(),
        ">f4" => "big-endian float32".to_string(),
        "<f8" | "=f8" | ">f8" => "float64".to_string(),
        "<f2" | "=f2" | ">f2" => "float16".to_string(),
        d => format!("dtype {d:?}"),
    };
    format!(
        "expected little-endian {} ('{}'), found {what}: convert with \
         np.save(path, arr.astype('{}'))",
        T::NAME,
        T::DESCR,
        T::DESCR
    )
}

fn read_2d<T: Element>(path: &Path) -> Result<Array2<T>, NpyError> {
    let mut f = std::fs::File::open(path).map_err(|e| err(path, format!("cannot open: {e}")))?;
    let file_len = f
        .metadata()
        .map_err(|e| err(path, format!("cannot stat: {e}")))?
        .len();
    let h = read_header(path, &mut f)?;
    // '|' (not applicable) never appears for multi-byte types; '=' is native, which
    // NumPy never writes but is little-endian on every machine this runs on.
    let descr_ok = h.descr == T::DESCR
        || (cfg!(target_endian = "little") && h.descr == format!("={}", &T::DESCR[1..]));
    if !descr_ok {
        return Err(err(path, dtype_hint::<T>(&h.descr)));
    }
    let [rows, cols] = h.shape[..] else {
        return Err(err(
            path,
            format!(
                "expected a 2-D array (rows, columns), found shape {:?}: reshape with arr.reshape(-1, d)",
                h.shape
            ),
        ));
    };
    if h.fortran_order && rows > 1 && cols > 1 {
        return Err(err(
            path,
            "the array is in Fortran (column-major) order: save np.ascontiguousarray(arr) instead",
        ));
    }
    let count = rows
        .checked_mul(cols)
        .ok_or_else(|| err(path, format!("shape {:?} is too large", h.shape)))?;
    let size = std::mem::size_of::<T>();
    let want = (count as u64)
        .checked_mul(size as u64)
        .and_then(|b| b.checked_add(h.data_offset as u64))
        .ok_or_else(|| err(path, format!("shape {:?} is too large", h.shape)))?;
    if file_len != want {
        let what = if file_len < want {
            "truncated"
        } else {
            "longer than its header says"
        };
        return Err(err(
            path,
            format!(
                "file is {what}: shape {:?} of {} needs {want} bytes, the file has {file_len}",
                h.shape,
                T::NAME
            ),
        ));
    }
    let mut data = vec![T::default(); count];
    f.read_exact(bytemuck::cast_slice_mut(&mut data))
        .map_err(|e| err(path, format!("cannot read the data: {e}")))?;
    for x in &mut data {
        *x = x.decode_le();
    }
    Ok(Array2 { rows, cols, data })
}

/// Read a little-endian `float32` C-order array of shape `(rows, cols)`.
pub fn read_f32(path: impl AsRef<Path>) -> Result<Array2<f32>, NpyError> {
    read_2d(path.as_ref())
}

/// Read a little-endian `int64` C-order array of shape `(rows, cols)`.
pub fn read_i64(path: impl AsRef<Path>) -> Result<Array2<i64>, NpyError> {
    read_2d(path.as_ref())
}

/// Preamble and header for `descr` and `shape`, padded so the data starts at a
/// multiple of 64 bytes (version 1.0, or 2.0 if the header needs it).
pub fn header_bytes(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims = match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    // Version 1.0 holds the padded header's length in a u16.
    let v1 = u16::try_from((10 + dict.len() + 1).div_ceil(64) * 64 - 10).is_ok();
    let pre = if v1 { 10 } else { 12 };
    let total = (pre + dict.len() + 1).div_ceil(64) * 64;
    let header_len = total - pre;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(MAGIC);
    if v1 {
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header_len as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&[2, 0]);
        out.extend_from_slice(&(header_len as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    out
}

fn write<T: Element>(path: &Path, data: &[T], shape: &[usize]) -> std::io::Result<()> {
    let count: usize = shape.iter().product();
    if count != data.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} values do not fill shape {shape:?}", data.len()),
        ));
    }
    let mut f = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    f.write_all(&header_bytes(T::DESCR, shape))?;
    let size = std::mem::size_of::<T>();
    let mut buf = Vec::with_capacity(1 << 16);
    for chunk in data.chunks(1 << 13) {
        buf.clear();
        for x in chunk {
            buf.extend_from_slice(&x.encode_le()[..size]);
        }
        f.write_all(&buf)?;
    }
    f.flush()
}

/// Write a little-endian `float32` C-order array of `shape`.
pub fn write_f32(path: &Path, data: &[f32], shape: &[usize]) -> std::io::Result<()> {
    write(path, data, shape)
}

/// Write a little-endian `int64` C-order array of `shape`.
pub fn write_i64(path: &Path, data: &[i64], shape: &[usize]) -> std::io::Result<()> {
    write(path, data, shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(dir: &Path, name: &str, version: u8, dict: &str, data: &[u8]) -> PathBuf {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&[version, 0]);
        if version == 1 {
            b.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        } else {
            b.extend_from_slice(&(dict.len() as u32).to_le_bytes());
        }
        b.extend_from_slice(dict.as_bytes());
        b.extend_from_slice(data);
        let p = dir.join(name);
        std::fs::write(&p, b).unwrap();
        p
    }

    #[test]
    fn round_trips_f32_and_i64() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<f32> = (0..3 * 128).map(|i| (i as f32 - 100.5) / 7.0).collect();
        let p = dir.path().join("f.npy");
        write_f32(&p, &data, &[3, 128]).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(
            (bytes.len() - data.len() * 4) % 64,
            0,
            "data 64-byte aligned"
        );
        let a = read_f32(&p).unwrap();
        assert_eq!((a.rows, a.cols), (3, 128));
        assert_eq!(a.data, data);
        assert_eq!(a.row(2), &data[256..]);

        let ids: Vec<i64> = vec![0, -1, i64::MAX, i64::MIN, 42, 7];
        let q = dir.path().join("i.npy");
        write_i64(&q, &ids, &[2, 3]).unwrap();
        let b = read_i64(&q).unwrap();
        assert_eq!((b.rows, b.cols, b.data), (2, 3, ids));

        // Empty arrays round-trip too.
        write_f32(&p, &[], &[0, 128]).unwrap();
        assert_eq!(read_f32(&p).unwrap().rows, 0);
        // A shape the data does not fill is refused.
        assert!(write_f32(&p, &[1.0], &[2, 1]).is_err());
    }

    #[test]
    fn reads_versions_2_and_3_and_odd_spacing() {
        let dir = tempfile::tempdir().unwrap();
        let vals = [1.5f32, -2.0, 3.25, 0.0];
        let data: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        for v in [2, 3] {
            let p = file_with(
                dir.path(),
                "v.npy",
                v,
                "{\"descr\":\"<f4\",\"fortran_order\":False,\"shape\":(2L,2L)}\n",
                &data,
            );
            let a = read_f32(&p).unwrap();
            assert_eq!((a.rows, a.cols, a.data), (2, 2, vals.to_vec()));
        }
        // A Fortran-order array with one row is the same bytes as C order.
        let p = file_with(
            dir.path(),
            "f1.npy",
            1,
            "{'descr': '<f4', 'fortran_order': True, 'shape': (1, 4), }\n",
            &data,
        );
        assert_eq!(read_f32(&p).unwrap().data, vals.to_vec());
    }

    #[test]
    fn refuses_what_it_does_not_read_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let four = [0u8; 16];
        let cases: Vec<(PathBuf, &str)> = vec![
            (
                {
                    let p = d.join("junk.npy");
                    std::fs::write(&p, b"hello, not numpy at all").unwrap();
                    p
                },
                "not an .npy file",
            ),
            (
                file_with(d, "v9.npy", 9, "{}", &[]),
                "version 9.0 is not supported",
            ),
            (
                file_with(
                    d,
                    "f8.npy",
                    1,
                    "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 2), }",
                    &four,
                ),
                "found float64",
            ),
            (
                file_with(
                    d,
                    "be.npy",
                    1,
                    "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 2), }",
                    &four,
                ),
                "big-endian float32",
            ),
            (
                file_with(
                    d,
                    "fo.npy",
                    1,
                    "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }",
                    &four,
                ),
                "Fortran",
            ),
            (
                file_with(
                    d,
                    "1d.npy",
                    1,
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }",
                    &four,
                ),
                "expected a 2-D array",
            ),
            (
                file_with(
                    d,
                    "short.npy",
                    1,
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
                    &four,
                ),
                "truncated",
            ),
            (
                file_with(
                    d,
                    "long.npy",
                    1,
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3), }",
                    &four,
                ),
                "longer than its header",
            ),
            (
                file_with(
                    d,
                    "rec.npy",
                    1,
                    "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }",
                    &four,
                ),
                "structured",
            ),
            (
                file_with(d, "cut.npy", 1, "{'descr': '<f4', 'shape': (1,", &four),
                "",
            ),
        ];
        for (p, want) in cases {
            let e = read_f32(&p).unwrap_err().to_string();
            assert!(e.contains(want), "{}: {e}", p.display());
            assert!(
                e.contains(&p.display().to_string()),
                "error names the file: {e}"
            );
        }
        // int64 asked of a float32 file.
        let p = d.join("ok.npy");
        write_f32(&p, &[1.0, 2.0], &[1, 2]).unwrap();
        assert!(
            read_i64(&p)
                .unwrap_err()
                .to_string()
                .contains("expected little-endian int64")
        );
    }

    /// Files NumPy itself wrote (when python3 with numpy is installed), and a
    /// file written here read back by NumPy.
    #[test]
    fn agrees_with_numpy() {
        let dir = tempfile::tempdir().unwrap();
        let mine = dir.path().join("mine.npy");
        write_i64(&mine, &[5, -6, 7, 8, 9, 10], &[3, 2]).unwrap();
        let script = format!(
            r#"
import numpy as np
a = np.arange(5 * 128, dtype=np.float32).reshape(5, 128) / 3.0 - 7.0
np.save({d:?} + "/np_v1.npy", a)
np.lib.format.write_array(open({d:?} + "/np_v2.npy", "wb"), a, version=(2, 0))
np.save({d:?} + "/np_ids.npy", np.array([[1, -2], [3, 4]], dtype=np.int64))
m = np.load({m:?})
assert m.dtype == np.int64 and m.shape == (3, 2), (m.dtype, m.shape)
assert m.tolist() == [[5, -6], [7, 8], [9, 10]], m.tolist()
"#,
            d = dir.path().display().to_string(),
            m = mine.display().to_string(),
        );
        // The harness's virtual environment has numpy; else whatever python3 is.
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-venv/bin/python");
        let python = if venv.exists() {
            venv
        } else {
            PathBuf::from("python3")
        };
        let out = match std::process::Command::new(&python)
            .arg("-c")
            .arg(&script)
            .output()
        {
            Ok(o) => o,
            Err(e) => {
                println!("skipped: python3 is not available ({e})");
                return;
            }
        };
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("No module named 'numpy'") {
                println!("skipped: numpy is not installed for {}", python.display());
                return;
            }
            panic!("numpy check failed: {stderr}");
        }
        let want: Vec<f32> = (0..5 * 128).map(|i| i as f32 / 3.0 - 7.0).collect();
        for name in ["np_v1.npy", "np_v2.npy"] {
            let a = read_f32(dir.path().join(name)).unwrap();
            assert_eq!((a.rows, a.cols), (5, 128), "{name}");
            assert_eq!(a.data, want, "{name}");
        }
        let ids = read_i64(dir.path().join("np_ids.npy")).unwrap();
        assert_eq!((ids.rows, ids.cols, ids.data), (2, 2, vec![1, -2, 3, 4]));
        println!("checked against numpy with {}", python.display());
    }
}
