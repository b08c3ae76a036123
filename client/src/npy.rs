//! Reading and writing `.npy` files (NumPy's array format, versions 1 to 3).
//!
//! Format (<https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html>):
//! the magic `\x93NUMPY`, a major and a minor version byte, the header length
//! (little-endian `u16` in version 1, `u32` in versions 2 and 3), then the
//! header: a Python dict literal such as
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (1000, 128), }`, padded
//! with spaces and a newline so the data starts at a multiple of 64 bytes.
//! The data follows, in C (row-major) order unless `fortran_order` is True.
//!
//! Read: vectors as `float32` or `float64` (converted to `f32`), either byte
//! order, shape `(N, D)` or `(D,)` (one vector), C or Fortran order; ids as
//! signed or unsigned 32- or 64-bit integers, shape `(N,)` or `(N, 1)`.
//! Write: little-endian `float32` matrices and `uint64` or `int64` vectors,
//! version 1.

use std::fmt;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// Anything wrong with an `.npy` file, with the file's path.
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

/// Element type of an array, from its `descr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 32-bit integer.
    U32,
    /// Unsigned 64-bit integer.
    U64,
}

impl Dtype {
    fn size(self) -> usize {
        match self {
            Dtype::F32 | Dtype::I32 | Dtype::U32 => 4,
            Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
        }
    }
}

/// The parsed header of an `.npy` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Element type.
    pub dtype: Dtype,
    /// True for big-endian data.
    pub big_endian: bool,
    /// Column-major data.
    pub fortran_order: bool,
    /// Dimensions.
    pub shape: Vec<usize>,
}

/// A Python literal, as far as `.npy` headers use them.
#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Str(String),
    Bool(bool),
    Int(usize),
    Tuple(Vec<Lit>),
    Dict(Vec<(String, Lit)>),
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.pos).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        match self.peek() {
            Some(x) if x == c => {
                self.pos += 1;
                Ok(())
            }
            Some(x) => Err(format!(
                "header: expected '{}' at byte {}, found '{}'",
                c as char, self.pos, x as char
            )),
            None => Err(format!("header: expected '{}', found the end", c as char)),
        }
    }

    fn value(&mut self) -> Result<Lit, String> {
        match self.peek() {
            Some(q @ (b'\'' | b'"')) => {
                self.pos += 1;
                let start = self.pos;
                while self.pos < self.s.len() && self.s[self.pos] != q {
                    self.pos += 1;
                }
                if self.pos >= self.s.len() {
                    return Err("header: unterminated string".into());
                }
                let text = String::from_utf8_lossy(&self.s[start..self.pos]).into_owned();
                self.pos += 1;
                Ok(Lit::Str(text))
            }
            Some(b'(') => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    if self.peek() == Some(b')') {
                        self.pos += 1;
                        break;
                    }
                    items.push(self.value()?);
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b')') => {}
                        _ => return Err("header: malformed tuple".into()),
                    }
                }
                Ok(Lit::Tuple(items))
            }
            Some(b'{') => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    if self.peek() == Some(b'}') {
                        self.pos += 1;
                        break;
                    }
                    let Lit::Str(key) = self.value()? else {
                        return Err("header: dictionary keys must be strings".into());
                    };
                    self.expect(b':')?;
                    items.push((key, self.value()?));
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {}
                        _ => return Err("header: malformed dictionary".into()),
                    }
                }
                Ok(Lit::Dict(items))
            }
            Some(c) if c.is_ascii_digit() => {
                let start = self.pos;
                while self.pos < self.s.len() && self.s[self.pos].is_ascii_digit() {
                    self.pos += 1;
                }
                // Python 2 wrote long integers with an `L` suffix.
                let digits = std::str::from_utf8(&self.s[start..self.pos]).unwrap_or("");
                if self.s.get(self.pos) == Some(&b'L') {
                    self.pos += 1;
                }
                digits
                    .parse()
                    .map(Lit::Int)
                    .map_err(|_| format!("header: dimension {digits} is too large"))
            }
            Some(_) => {
                for (word, v) in [("True", true), ("False", false)] {
                    if self.s[self.pos..].starts_with(word.as_bytes()) {
                        self.pos += word.len();
                        return Ok(Lit::Bool(v));
                    }
                }
                Err(format!("header: unexpected text at byte {}", self.pos))
            }
            None => Err("header: unexpected end".into()),
        }
    }
}

/// Parse the header dict text.
pub fn parse_header(text: &str) -> Result<Header, String> {
    let mut p = Parser {
        s: text.as_bytes(),
        pos: 0,
    };
    let Lit::Dict(items) = p.value()? else {
        return Err("header: not a dictionary".into());
    };
    let get = |k: &str| items.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    let Some(Lit::Str(descr)) = get("descr") else {
        return Err("header: no 'descr' string (structured arrays are not supported)".into());
    };
    let (order, code) = descr.split_at(descr.len().min(1));
    let big_endian = match order {
        "<" | "|" | "=" => false,
        ">" => true,
        _ => return Err(format!("header: unsupported dtype {descr:?}")),
    };
    let dtype = match code {
        "f4" => Dtype::F32,
        "f8" => Dtype::F64,
        "i4" => Dtype::I32,
        "i8" => Dtype::I64,
        "u4" => Dtype::U32,
        "u8" => Dtype::U64,
        _ => {
            return Err(format!(
                "dtype {descr:?} is not supported (use float32 for vectors, int64 or uint64 for ids)"
            ));
        }
    };
    let fortran_order = match get("fortran_order") {
        Some(Lit::Bool(b)) => *b,
        None => false,
        Some(_) => return Err("header: 'fortran_order' is not True or False".into()),
    };
    let Some(Lit::Tuple(dims)) = get("shape") else {
        return Err("header: no 'shape' tuple".into());
    };
    let shape = dims
        .iter()
        .map(|d| match d {
            Lit::Int(n) => Ok(*n),
            _ => Err("header: 'shape' holds something other than integers".to_string()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Header {
        dtype,
        big_endian,
        fortran_order,
        shape,
    })
}

/// Read the preamble and header; the reader is left at the first data byte.
fn read_header(path: &Path, r: &mut impl Read) -> Result<Header, NpyError> {
    let mut pre = [0u8; 8];
    r.read_exact(&mut pre)
        .map_err(|e| err(path, format!("cannot read the .npy preamble: {e}")))?;
    if &pre[..6] != MAGIC {
        return Err(err(path, "not an .npy file (no \\x93NUMPY magic)"));
    }
    let len = match pre[6] {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b)
                .map_err(|e| err(path, format!("truncated header: {e}")))?;
            u16::from_le_bytes(b) as usize
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b)
                .map_err(|e| err(path, format!("truncated header: {e}")))?;
            u32::from_le_bytes(b) as usize
        }
        v => {
            return Err(err(
                path,
                format!(".npy format version {v} is not supported"),
            ));
        }
    };
    if len > 1 << 20 {
        return Err(err(
            path,
            format!("header of {len} bytes is implausibly large"),
        ));
    }
    let mut text = vec![0u8; len];
    r.read_exact(&mut text)
        .map_err(|e| err(path, format!("truncated header: {e}")))?;
    let text = String::from_utf8(text).map_err(|_| err(path, "header is not UTF-8"))?;
    parse_header(&text).map_err(|m| err(path, m))
}

/// Read `count` elements of `dtype`, decoding each with `f`.
fn read_data<T>(
    path: &Path,
    r: &mut impl Read,
    h: &Header,
    count: usize,
    mut f: impl FnMut(&[u8], bool) -> T,
) -> Result<Vec<T>, NpyError> {
    let size = h.dtype.size();
    let mut out = Vec::with_capacity(count);
    let mut buf = vec![0u8; (1 << 20) / size * size];
    let mut left = count;
    while left > 0 {
        let n = left.min(buf.len() / size);
        let chunk = &mut buf[..n * size];
        r.read_exact(chunk).map_err(|_| {
            err(
                path,
                format!(
                    "file is truncated: the header promises {count} values ({} bytes of data)",
                    count * size
                ),
            )
        })?;
        out.extend(chunk.chunks_exact(size).map(|b| f(b, h.big_endian)));
        left -= n;
    }
    let mut extra = [0u8; 1];
    if matches!(r.read(&mut extra), Ok(n) if n > 0) {
        return Err(err(
            path,
            format!("file has bytes after the {count} values the header promises"),
        ));
    }
    Ok(out)
}

fn open(path: &Path) -> Result<(BufReader<std::fs::File>, Header), NpyError> {
    let f = std::fs::File::open(path).map_err(|e| err(path, format!("cannot open: {e}")))?;
    let mut r = BufReader::with_capacity(1 << 16, f);
    let h = read_header(path, &mut r)?;
    Ok((r, h))
}

/// A row-major matrix of `f32`.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// `rows × cols` values, row after row.
    pub data: Vec<f32>,
}

impl Matrix {
    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Every row, in order.
    pub fn rows(&self) -> impl ExactSizeIterator<Item = &[f32]> {
        self.data.chunks_exact(self.cols.max(1))
    }
}

/// Read a float matrix of shape `(N, D)` (or one vector of shape `(D,)`).
#[expect(
    clippy::big_endian_bytes,
    reason = "NumPy files may hold big-endian data ('>f4')"
)]
pub fn read_matrix(path: impl AsRef<Path>) -> Result<Matrix, NpyError> {
    let path = path.as_ref();
    let (mut r, h) = open(path)?;
    let (rows, cols) = match h.shape[..] {
        [n, d] => (n, d),
        [d] => (1, d),
        _ => {
            return Err(err(
                path,
                format!(
                    "expected a matrix of shape (N, D), found shape {:?}",
                    h.shape
                ),
            ));
        }
    };
    let count = rows
        .checked_mul(cols)
        .ok_or_else(|| err(path, "shape is too large"))?;
    let data = match h.dtype {
        Dtype::F32 => read_data(path, &mut r, &h, count, |b, be| {
            let a = [b[0], b[1], b[2], b[3]];
            if be {
                f32::from_be_bytes(a)
            } else {
                f32::from_le_bytes(a)
            }
        })?,
        Dtype::F64 => read_data(path, &mut r, &h, count, |b, be| {
            let a = [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
            (if be {
                f64::from_be_bytes(a)
            } else {
                f64::from_le_bytes(a)
            }) as f32
        })?,
        other => {
            return Err(err(
                path,
                format!("expected float32 or float64 vectors, found {other:?}"),
            ));
        }
    };
    let data = if h.fortran_order && rows > 1 && cols > 1 {
        // Column-major: element (i, j) is at j * rows + i.
        let mut t = vec![0f32; count];
        for j in 0..cols {
            for i in 0..rows {
                t[i * cols + j] = data[j * rows + i];
            }
        }
        t
    } else {
        data
    };
    Ok(Matrix { rows, cols, data })
}

/// Read ids: integers of shape `(N,)` or `(N, 1)`; negative values are refused.
#[expect(
    clippy::big_endian_bytes,
    reason = "NumPy files may hold big-endian data ('>i8')"
)]
pub fn read_ids(path: impl AsRef<Path>) -> Result<Vec<u64>, NpyError> {
    let path = path.as_ref();
    let (mut r, h) = open(path)?;
    let ([n] | [n, 1]) = h.shape[..] else {
        return Err(err(
            path,
            format!("expected ids of shape (N,), found shape {:?}", h.shape),
        ));
    };
    let signed: Vec<i128> = match h.dtype {
        Dtype::I64 => read_data(path, &mut r, &h, n, |b, be| {
            let a = [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
            i128::from(if be {
                i64::from_be_bytes(a)
            } else {
                i64::from_le_bytes(a)
            })
        })?,
        Dtype::U64 => read_data(path, &mut r, &h, n, |b, be| {
            let a = [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
            i128::from(if be {
                u64::from_be_bytes(a)
            } else {
                u64::from_le_bytes(a)
            })
        })?,
        Dtype::I32 => read_data(path, &mut r, &h, n, |b, be| {
            let a = [b[0], b[1], b[2], b[3]];
            i128::from(if be {
                i32::from_be_bytes(a)
            } else {
                i32::from_le_bytes(a)
            })
        })?,
        Dtype::U32 => read_data(path, &mut r, &h, n, |b, be| {
            let a = [b[0], b[1], b[2], b[3]];
            i128::from(if be {
                u32::from_be_bytes(a)
            } else {
                u32::from_le_bytes(a)
            })
        })?,
        other => {
            return Err(err(path, format!("expected integer ids, found {other:?}")));
        }
    };
    signed
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            u64::try_from(v).map_err(|_| err(path, format!("ids[{i}] is negative ({v})")))
        })
        .collect()
}

/// The preamble and padded header for `descr` and `shape`.
fn header_bytes(descr: &str, shape: &[usize]) -> Vec<u8> {
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
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    // Preamble (10 bytes) + dict + padding + '\n' is a multiple of 64.
    let total = (10 + dict.len() + 1).div_ceil(64) * 64;
    while 10 + dict.len() + 1 < total {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

fn write_file(
    path: &Path,
    header: &[u8],
    data: impl Iterator<Item = [u8; 8]>,
    width: usize,
) -> Result<(), NpyError> {
    let f = std::fs::File::create(path).map_err(|e| err(path, format!("cannot create: {e}")))?;
    let mut w = std::io::BufWriter::new(f);
    let io = |e: std::io::Error| err(path, format!("write failed: {e}"));
    w.write_all(header).map_err(io)?;
    for b in data {
        w.write_all(&b[..width]).map_err(io)?;
    }
    w.flush().map_err(io)
}

/// Write a little-endian float32 matrix `(rows, cols)`.
pub fn write_matrix(path: impl AsRef<Path>, m: &Matrix) -> Result<(), NpyError> {
    let path = path.as_ref();
    if m.data.len() != m.rows * m.cols {
        return Err(err(path, "matrix data does not match its shape"));
    }
    let header = header_bytes("<f4", &[m.rows, m.cols]);
    write_file(
        path,
        &header,
        m.data.iter().map(|v| {
            let b = v.to_le_bytes();
            [b[0], b[1], b[2], b[3], 0, 0, 0, 0]
        }),
        4,
    )
}

/// Write little-endian uint64 ids of shape `(N,)`.
pub fn write_ids(path: impl AsRef<Path>, ids: &[u64]) -> Result<(), NpyError> {
    let path = path.as_ref();
    let header = header_bytes("<u8", &[ids.len()]);
    write_file(path, &header, ids.iter().map(|v| v.to_le_bytes()), 8)
}

/// Write ids as little-endian int64 of shape `(N,)` (NumPy's default integer
/// type); an id above `i64::MAX` is refused.
pub fn write_ids_i64(path: impl AsRef<Path>, ids: &[u64]) -> Result<(), NpyError> {
    let path = path.as_ref();
    if let Some(i) = ids.iter().position(|&v| i64::try_from(v).is_err()) {
        return Err(err(
            path,
            format!("ids[{i}] = {} does not fit int64", ids[i]),
        ));
    }
    let header = header_bytes("<i8", &[ids.len()]);
    write_file(path, &header, ids.iter().map(|v| v.to_le_bytes()), 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numpy_headers() {
        let h =
            parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1000, 128), }  \n")
                .unwrap();
        assert_eq!(
            h,
            Header {
                dtype: Dtype::F32,
                big_endian: false,
                fortran_order: false,
                shape: vec![1000, 128]
            }
        );
        let h = parse_header("{\"descr\":\">i8\",\"fortran_order\":True,\"shape\":(5,)}").unwrap();
        assert_eq!(h.dtype, Dtype::I64);
        assert!(h.big_endian && h.fortran_order);
        assert_eq!(h.shape, vec![5]);
        let h =
            parse_header("{'descr': '<f8', 'fortran_order': False, 'shape': (3L, 2L), }").unwrap();
        assert_eq!(h.shape, vec![3, 2]);
        assert!(parse_header("{'descr': '<c8', 'fortran_order': False, 'shape': (3,), }").is_err());
        assert!(parse_header("{'descr': [('a', '<f4')], 'shape': (3,), }").is_err());
        assert!(parse_header("{'descr': '<f4', 'shape': (3,").is_err());
    }

    #[test]
    fn round_trips_matrices_and_ids() {
        let dir = tempfile::tempdir().unwrap();
        let m = Matrix {
            rows: 3,
            cols: 4,
            data: (0..12).map(|i| i as f32 * 0.5 - 1.0).collect(),
        };
        let p = dir.path().join("m.npy");
        write_matrix(&p, &m).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(
            (bytes.len() - 12 * 4) % 64,
            0,
            "data starts 64-byte aligned"
        );
        assert_eq!(read_matrix(&p).unwrap(), m);
        let ids = vec![0, 7, u64::MAX];
        let q = dir.path().join("ids.npy");
        write_ids(&q, &ids).unwrap();
        assert_eq!(read_ids(&q).unwrap(), ids);
        let r = dir.path().join("ids64.npy");
        write_ids_i64(&r, &ids[..2]).unwrap();
        assert!(std::fs::read(&r).unwrap().windows(5).any(|w| w == b"'<i8'"));
        assert_eq!(read_ids(&r).unwrap(), &ids[..2]);
        assert!(write_ids_i64(&r, &ids).is_err());
    }

    /// Hand-built files: version 2 header, big-endian float64 in Fortran order.
    #[test]
    #[expect(clippy::big_endian_bytes, reason = "the file under test is big-endian")]
    fn reads_v2_big_endian_fortran_float64() {
        let dir = tempfile::tempdir().unwrap();
        let dict = "{'descr': '>f8', 'fortran_order': True, 'shape': (2, 3), }\n";
        let mut bytes = b"\x93NUMPY\x02\x00".to_vec();
        bytes.extend_from_slice(&(dict.len() as u32).to_le_bytes());
        bytes.extend_from_slice(dict.as_bytes());
        // Matrix [[1,2,3],[4,5,6]] stored column by column.
        for v in [1.0f64, 4.0, 2.0, 5.0, 3.0, 6.0] {
            bytes.extend_from_slice(&v.to_be_bytes());
        }
        let p = dir.path().join("f.npy");
        std::fs::write(&p, &bytes).unwrap();
        let m = read_matrix(&p).unwrap();
        assert_eq!((m.rows, m.cols), (2, 3));
        assert_eq!(m.data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn refuses_bad_files_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        std::fs::write(&p, b"hello world, not numpy").unwrap();
        assert!(
            read_matrix(&p)
                .unwrap_err()
                .to_string()
                .contains("not an .npy file")
        );
        // Truncated data.
        let m = Matrix {
            rows: 2,
            cols: 2,
            data: vec![1.0; 4],
        };
        write_matrix(&p, &m).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        assert!(
            read_matrix(&p)
                .unwrap_err()
                .to_string()
                .contains("truncated")
        );
        // Trailing garbage.
        let mut long = bytes.clone();
        long.push(0);
        std::fs::write(&p, &long).unwrap();
        assert!(read_matrix(&p).unwrap_err().to_string().contains("after"));
        // Negative ids.
        let dict = "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }\n";
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        b.extend_from_slice(dict.as_bytes());
        b.extend_from_slice(&5i64.to_le_bytes());
        b.extend_from_slice(&(-1i64).to_le_bytes());
        std::fs::write(&p, &b).unwrap();
        assert!(
            read_ids(&p)
                .unwrap_err()
                .to_string()
                .contains("ids[1] is negative")
        );
        // Ids read as vectors: wrong dtype.
        assert!(read_matrix(&p).unwrap_err().to_string().contains("float32"));
    }
}
