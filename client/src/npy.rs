//! Reading and writing `.npy` files (NumPy's array format, versions 1.0 to 3.0),
//! for the `visage` tool, the tests and the benchmarks.
//!
//! Format (<https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html>):
//! the magic `\x93NUMPY`, a major and a minor version byte, the header length
//! (little-endian `u16` in version 1.0, `u32` in versions 2.0 and 3.0), then the
//! header: a Python dict literal such as
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (1000, 128), }`, padded
//! with spaces and a newline so the data starts at a multiple of 64 bytes.
//! The data follows, in C (row-major) order unless `fortran_order` is True.
//!
//! Two readers of vectors, for two kinds of caller:
//! - [`read_matrix`] takes what NumPy users have: `float32` or `float64`
//!   (converted to `f32`), either byte order, shape `(N, D)` or `(D,)` (one
//!   vector), C or Fortran order; [`read_vectors`] does the same and checks
//!   `D` against the dimension of the gallery the vectors are for;
//! - [`read_f32`] (and [`read_i64`]) takes only little-endian C-order 2-D arrays
//!   of exactly that dtype, and refuses anything else with how to convert it
//!   with NumPy: for benchmark inputs, whose read time must not include a
//!   conversion.
//!
//! [`read_ids`] reads ids as signed or unsigned 32- or 64-bit integers, shape
//! `(N,)` or `(N, 1)`. Writers write little-endian `float32`, `int64` and
//! `uint64` arrays, version 1.0 (2.0 if the header needs it); [`F32Writer`]
//! writes a `float32` array a block of rows at a time, for arrays larger than
//! memory.
//!
//! Every error names the file and says what is wrong with it.

use std::fmt;
use std::io::{BufReader, BufWriter, Read, Write};
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
/// Longest header accepted.
const MAX_HEADER: usize = 1 << 20;

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

    /// NumPy's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
            Dtype::I32 => "int32",
            Dtype::I64 => "int64",
            Dtype::U32 => "uint32",
            Dtype::U64 => "uint64",
        }
    }

    /// The little-endian `descr`, as written.
    fn descr(self) -> &'static str {
        match self {
            Dtype::F32 => "<f4",
            Dtype::F64 => "<f8",
            Dtype::I32 => "<i4",
            Dtype::I64 => "<i8",
            Dtype::U32 => "<u4",
            Dtype::U64 => "<u8",
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

    /// Items of a tuple, list or dict up to `close`, each read by `item`.
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
                        "header: expected ',' or '{}' at byte {}, found '{}'",
                        close as char, self.pos, c as char
                    ));
                }
                None => return Err(format!("header: ends before its '{}'", close as char)),
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
                    .ok_or("header: unterminated string")?;
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
                        return Err("header: dictionary keys must be strings".to_string());
                    };
                    if p.peek() != Some(b':') {
                        return Err(format!("header: expected ':' after key {key:?}"));
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
    if p.peek().is_some() {
        return Err(format!(
            "header: text after the dictionary at byte {}",
            p.pos
        ));
    }
    let get = |k: &str| items.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    let descr = match get("descr") {
        Some(Lit::Str(d)) => d,
        Some(_) => {
            return Err(
                "header: 'descr' is not a plain dtype (structured arrays are not supported)".into(),
            );
        }
        None => return Err("header: no 'descr'".into()),
    };
    let (order, code) = descr.split_at(descr.len().min(1));
    let big_endian = match order {
        "<" | "|" => false,
        // Native order: NumPy never writes it.
        "=" => cfg!(target_endian = "big"),
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
    let shape = match get("shape") {
        Some(Lit::Tuple(dims)) => dims
            .iter()
            .map(|d| match d {
                Lit::Int(n) => Ok(*n),
                _ => Err("header: 'shape' holds something other than integers".to_string()),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err("header: 'shape' is not a tuple".into()),
        None => return Err("header: no 'shape' tuple".into()),
    };
    Ok(Header {
        dtype,
        big_endian,
        fortran_order,
        shape,
    })
}

/// Read the preamble and header; the reader is left at the first data byte.
/// Returns the header and the offset of the data.
fn read_header(path: &Path, r: &mut impl Read) -> Result<(Header, usize), NpyError> {
    let mut pre = [0u8; 8];
    r.read_exact(&mut pre)
        .map_err(|e| err(path, format!("cannot read the .npy preamble: {e}")))?;
    if &pre[..6] != MAGIC {
        return Err(err(path, "not an .npy file (no \\x93NUMPY magic)"));
    }
    let (len, offset) = match (pre[6], pre[7]) {
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
            format!("header of {len} bytes is implausibly large"),
        ));
    }
    let mut text = vec![0u8; len];
    r.read_exact(&mut text)
        .map_err(|e| err(path, format!("truncated header: {e}")))?;
    let text = String::from_utf8(text).map_err(|_| err(path, "header is not UTF-8"))?;
    let h = parse_header(&text).map_err(|m| err(path, m))?;
    Ok((h, offset + len))
}

/// Read `count` elements of `h.dtype`, decoding each with `f`.
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
            format!(
                "file is longer than its header says: bytes after the {count} values of shape {:?}",
                h.shape
            ),
        ));
    }
    Ok(out)
}

/// Open a file and read its header. A regular file's length is checked
/// against the header at once (before any data is read); the data of other
/// files (pipes) is checked as it is read.
fn open(path: &Path) -> Result<(BufReader<std::fs::File>, Header, usize), NpyError> {
    let f = std::fs::File::open(path).map_err(|e| err(path, format!("cannot open: {e}")))?;
    let meta = f
        .metadata()
        .map_err(|e| err(path, format!("cannot stat: {e}")))?;
    let mut r = BufReader::with_capacity(1 << 16, f);
    let (h, offset) = read_header(path, &mut r)?;
    if meta.is_file() {
        let file_len = meta.len();
        let want = h
            .shape
            .iter()
            .try_fold(h.dtype.size() as u64, |n, &d| n.checked_mul(d as u64))
            .and_then(|b| b.checked_add(offset as u64))
            .ok_or_else(|| err(path, format!("shape {:?} is too large", h.shape)))?;
        if file_len != want {
            let what = if file_len < want {
                "truncated"
            } else {
                "longer than its header says (bytes after the data)"
            };
            return Err(err(
                path,
                format!(
                    "file is {what}: shape {:?} of {} needs {want} bytes, the file has {file_len}",
                    h.shape,
                    h.dtype.name()
                ),
            ));
        }
    }
    Ok((r, h, offset))
}

/// The header of the `.npy` file at `path` and the offset of its data, the
/// file's length checked against the header: for a reader that maps the
/// data instead of reading it (a bulk import on the server).
pub fn layout(path: impl AsRef<Path>) -> Result<(Header, usize), NpyError> {
    let path = path.as_ref();
    let (_, h, offset) = open(path)?;
    Ok((h, offset))
}

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

/// A row-major matrix of `f32` (vectors, one a row).
pub type Matrix = Array2<f32>;

impl<T> Array2<T> {
    /// Row `i`.
    pub fn row(&self, i: usize) -> &[T] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Every row, in order.
    pub fn rows(&self) -> impl ExactSizeIterator<Item = &[T]> {
        self.data.chunks_exact(self.cols.max(1))
    }
}

/// Read a float matrix of shape `(N, D)` (or one vector of shape `(D,)`):
/// `float32` or `float64`, either byte order, C or Fortran order.
pub fn read_matrix(path: impl AsRef<Path>) -> Result<Matrix, NpyError> {
    read_matrix_with_shape(path.as_ref()).map(|(m, _)| m)
}

/// Read vectors for `gallery` (a name for messages, such as `gallery "staff"`),
/// whose vectors have `dim` values, as [`read_matrix`] does; a file whose
/// vectors have another length is refused with its shape and the gallery's
/// dimension.
pub fn read_vectors(path: impl AsRef<Path>, dim: usize, gallery: &str) -> Result<Matrix, NpyError> {
    let path = path.as_ref();
    let (m, shape) = read_matrix_with_shape(path)?;
    if m.cols != dim {
        let shown: Vec<String> = shape.iter().map(usize::to_string).collect();
        return Err(err(
            path,
            format!(
                "shape [{}] holds vectors of {} values, but {gallery} has dimension {dim} \
                 (expected shape [N, {dim}])",
                shown.join(", "),
                m.cols
            ),
        ));
    }
    Ok(m)
}

/// [`read_matrix`], with the shape the file's header gives.
#[expect(
    clippy::big_endian_bytes,
    reason = "NumPy files may hold big-endian data ('>f4')"
)]
fn read_matrix_with_shape(path: &Path) -> Result<(Matrix, Vec<usize>), NpyError> {
    let (mut r, h, _) = open(path)?;
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
                format!(
                    "expected float32 or float64 vectors, found {}",
                    other.name()
                ),
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
    Ok((Matrix { rows, cols, data }, h.shape))
}

/// Read exactly a little-endian C-order 2-D array of `dtype`; anything else
/// is refused with how to convert it.
fn read_exact_2d<T>(
    path: &Path,
    dtype: Dtype,
    decode: impl FnMut(&[u8], bool) -> T,
) -> Result<Array2<T>, NpyError> {
    let (mut r, h, _) = open(path)?;
    if h.dtype != dtype || h.big_endian {
        let order = if h.big_endian { "big-endian " } else { "" };
        return Err(err(
            path,
            format!(
                "expected little-endian {} ('{d}'), found {order}{}: convert with \
                 np.save(path, arr.astype('{d}'))",
                dtype.name(),
                h.dtype.name(),
                d = dtype.descr(),
            ),
        ));
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
    let data = read_data(path, &mut r, &h, count, decode)?;
    Ok(Array2 { rows, cols, data })
}

/// Read a little-endian `float32` C-order array of shape `(rows, cols)`, and
/// nothing else (see the module's documentation).
pub fn read_f32(path: impl AsRef<Path>) -> Result<Matrix, NpyError> {
    read_exact_2d(path.as_ref(), Dtype::F32, |b, _| {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    })
}

/// Read a little-endian `int64` C-order array of shape `(rows, cols)`, and
/// nothing else.
pub fn read_i64(path: impl AsRef<Path>) -> Result<Array2<i64>, NpyError> {
    read_exact_2d(path.as_ref(), Dtype::I64, |b, _| {
        i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    })
}

/// Read ids: integers of shape `(N,)` or `(N, 1)`; negative values are refused.
#[expect(
    clippy::big_endian_bytes,
    reason = "NumPy files may hold big-endian data ('>i8')"
)]
pub fn read_ids(path: impl AsRef<Path>) -> Result<Vec<u64>, NpyError> {
    let path = path.as_ref();
    let (mut r, h, _) = open(path)?;
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
            return Err(err(
                path,
                format!("expected integer ids, found {}", other.name()),
            ));
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

/// Preamble and header for `descr` and `shape`, padded so the data starts at a
/// multiple of 64 bytes (version 1.0, or 2.0 if the header needs it).
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

/// Write an array of `dtype` and `shape` whose values, each `W` bytes
/// little-endian, are `values`.
fn write_values<const W: usize>(
    path: &Path,
    dtype: Dtype,
    shape: &[usize],
    values: impl ExactSizeIterator<Item = [u8; W]>,
) -> Result<(), NpyError> {
    debug_assert_eq!(dtype.size(), W);
    let count = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    if count != Some(values.len()) {
        return Err(err(
            path,
            format!("{} values do not fill shape {shape:?}", values.len()),
        ));
    }
    let f = std::fs::File::create(path).map_err(|e| err(path, format!("cannot create: {e}")))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let io = |e: std::io::Error| err(path, format!("write failed: {e}"));
    w.write_all(&header_bytes(dtype.descr(), shape))
        .map_err(io)?;
    for b in values {
        w.write_all(&b).map_err(io)?;
    }
    w.flush().map_err(io)
}

/// A little-endian `float32` C-order array of shape `(rows, cols)` written a
/// block of rows at a time, so an array larger than memory never has to be
/// held: the header first, then the rows as they come. [`F32Writer::finish`]
/// checks that exactly `rows` rows were written.
pub struct F32Writer {
    path: PathBuf,
    w: BufWriter<std::fs::File>,
    cols: usize,
    expected: usize,
    written: usize,
    bytes: Vec<u8>,
}

impl F32Writer {
    /// Create `path` (truncating it) for `rows` rows of `cols` values.
    pub fn create(path: impl AsRef<Path>, rows: usize, cols: usize) -> Result<F32Writer, NpyError> {
        let path = path.as_ref();
        let expected = rows
            .checked_mul(cols)
            .ok_or_else(|| err(path, format!("shape ({rows}, {cols}) is too large")))?;
        let f =
            std::fs::File::create(path).map_err(|e| err(path, format!("cannot create: {e}")))?;
        let mut w = BufWriter::with_capacity(1 << 22, f);
        w.write_all(&header_bytes(Dtype::F32.descr(), &[rows, cols]))
            .map_err(|e| err(path, format!("write failed: {e}")))?;
        Ok(F32Writer {
            path: path.to_owned(),
            w,
            cols,
            expected,
            written: 0,
            bytes: Vec::new(),
        })
    }

    /// Append whole rows (`values.len()` a multiple of the row length).
    pub fn write_rows(&mut self, values: &[f32]) -> Result<(), NpyError> {
        if !values.len().is_multiple_of(self.cols.max(1)) {
            return Err(err(
                &self.path,
                format!(
                    "{} values are not whole rows of {}",
                    values.len(),
                    self.cols
                ),
            ));
        }
        if self.written + values.len() > self.expected {
            return Err(err(
                &self.path,
                format!(
                    "more values than the shape holds ({} after {} of {})",
                    values.len(),
                    self.written,
                    self.expected
                ),
            ));
        }
        // Element by element into a buffer the compiler turns into a copy
        // on little-endian machines.
        self.bytes.resize(values.len() * 4, 0);
        for (b, v) in self.bytes.chunks_exact_mut(4).zip(values) {
            b.copy_from_slice(&v.to_le_bytes());
        }
        self.w
            .write_all(&self.bytes)
            .map_err(|e| err(&self.path, format!("write failed: {e}")))?;
        self.written += values.len();
        Ok(())
    }

    /// Flush, checking that every row of the shape was written.
    pub fn finish(mut self) -> Result<(), NpyError> {
        if self.written != self.expected {
            return Err(err(
                &self.path,
                format!(
                    "{} values written, the shape holds {}",
                    self.written, self.expected
                ),
            ));
        }
        self.w
            .flush()
            .map_err(|e| err(&self.path, format!("write failed: {e}")))
    }
}

/// Write a little-endian `float32` C-order array of `shape`.
pub fn write_f32(path: impl AsRef<Path>, data: &[f32], shape: &[usize]) -> Result<(), NpyError> {
    let values = data.iter().map(|v| v.to_le_bytes());
    write_values(path.as_ref(), Dtype::F32, shape, values)
}

/// Write a little-endian `int64` C-order array of `shape`.
pub fn write_i64(path: impl AsRef<Path>, data: &[i64], shape: &[usize]) -> Result<(), NpyError> {
    let values = data.iter().map(|v| v.to_le_bytes());
    write_values(path.as_ref(), Dtype::I64, shape, values)
}

/// Write a little-endian float32 matrix `(rows, cols)`.
pub fn write_matrix(path: impl AsRef<Path>, m: &Matrix) -> Result<(), NpyError> {
    write_f32(path, &m.data, &[m.rows, m.cols])
}

/// Write little-endian uint64 ids of shape `(N,)`.
pub fn write_ids(path: impl AsRef<Path>, ids: &[u64]) -> Result<(), NpyError> {
    let values = ids.iter().map(|v| v.to_le_bytes());
    write_values(path.as_ref(), Dtype::U64, &[ids.len()], values)
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
    let values = ids.iter().map(|v| v.to_le_bytes());
    write_values(path, Dtype::I64, &[ids.len()], values)
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

    // The benchmarks' reader and writer ([`read_f32`], [`read_i64`], [`write_f32`], [`write_i64`]).

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
    fn streams_f32_rows_in_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.npy");
        let data: Vec<f32> = (0..5 * 16).map(|i| i as f32 * 0.5).collect();
        let mut w = F32Writer::create(&p, 5, 16).unwrap();
        w.write_rows(&data[..32]).unwrap();
        w.write_rows(&data[32..]).unwrap();
        w.finish().unwrap();
        let m = read_f32(&p).unwrap();
        assert_eq!((m.rows, m.cols), (5, 16));
        assert_eq!(m.data, data);
        let mut w = F32Writer::create(&p, 5, 16).unwrap();
        assert!(w.write_rows(&data[..7]).is_err());
        w.write_rows(&data[..16]).unwrap();
        assert!(w.finish().is_err());
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
    fn vectors_are_checked_against_the_gallerys_dimension() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.npy");
        let data: Vec<f32> = (0..2 * 512).map(|i| i as f32 / 512.0).collect();
        write_f32(&p, &data, &[2, 512]).unwrap();
        let m = read_vectors(&p, 512, "gallery \"big\"").unwrap();
        assert_eq!((m.rows, m.cols, &m.data), (2, 512, &data));
        let e = read_vectors(&p, 128, "gallery \"staff\"")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "{}: shape [2, 512] holds vectors of 512 values, but gallery \"staff\" has \
                 dimension 128 (expected shape [N, 128])",
                p.display()
            )
        );
        // One vector of shape (D,) shows its own shape.
        write_f32(&p, &data[..128], &[128]).unwrap();
        let e = read_vectors(&p, 512, "gallery \"big\"").unwrap_err();
        assert!(
            e.to_string().contains(
                ": shape [128] holds vectors of 128 values, but gallery \"big\" has dimension 512"
            ),
            "{e}"
        );
        assert_eq!(read_vectors(&p, 128, "g").unwrap().rows, 1);
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
