//! Sources: where bytes come from. A source is a named reader (a file, standard input,
//! later a Loki stream); gzip is recognised by its magic bytes, not by the file name, so
//! rotated `access.log.2.gz` and a gzip piped to stdin both work. Concatenated gzip members
//! (what `cat a.gz b.gz` and many rotators produce) are all read.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// One input to scan: a display name (used as the record's source) and its bytes.
pub struct Input {
    /// The name reports use: the path as given, or `stdin`.
    pub name: String,
    /// The decompressed byte stream.
    pub reader: Box<dyn Read + Send>,
    /// Whether the bytes were gzip-compressed.
    pub gzip: bool,
}

impl Input {
    /// Opens `path`, or standard input for `-`.
    pub fn open(path: &Path) -> Result<Input> {
        if path == Path::new("-") {
            return Ok(Input::from_reader("stdin", io::stdin()));
        }
        let file = File::open(path).map_err(|source| Error::Input { path: path.to_path_buf(), source })?;
        Input::sniff(path.display().to_string(), Box::new(file))
            .map_err(|source| Error::Input { path: PathBuf::from(path), source })
    }

    /// Wraps an already-open reader, sniffing it for gzip. Used for stdin and tests.
    pub fn from_reader(name: &str, reader: impl Read + Send + 'static) -> Input {
        match Input::sniff(name.to_string(), Box::new(reader)) {
            Ok(input) => input,
            // A read error while sniffing resurfaces on the first real read.
            Err(e) => Input { name: name.to_string(), reader: Box::new(FailingReader(Some(e))), gzip: false },
        }
    }

    fn sniff(name: String, reader: Box<dyn Read + Send>) -> io::Result<Input> {
        // 256 KiB reads: large enough that per-read overhead vanishes on fast inputs.
        let mut buffered = BufReader::with_capacity(256 * 1024, reader);
        let gzip = peek_gzip(&mut buffered)?;
        let reader: Box<dyn Read + Send> =
            if gzip { Box::new(flate2::bufread::MultiGzDecoder::new(buffered)) } else { Box::new(buffered) };
        Ok(Input { name, reader, gzip })
    }
}

/// Looks at the first two bytes without consuming them. A pipe's first fill may hold a
/// single byte; then that byte and the next are read and put back in front of the rest.
fn peek_gzip(reader: &mut BufReader<Box<dyn Read + Send>>) -> io::Result<bool> {
    let available = reader.fill_buf()?;
    if available.len() >= 2 || available.is_empty() {
        return Ok(available.starts_with(&GZIP_MAGIC));
    }
    if available[0] != GZIP_MAGIC[0] {
        return Ok(false);
    }
    let mut head = [0u8; 2];
    reader.read_exact(&mut head[..1])?;
    let n = reader.read(&mut head[1..])?;
    let head = head[..1 + n].to_vec();
    let gzip = head == GZIP_MAGIC;
    let rest = std::mem::replace(reader, BufReader::new(Box::new(io::empty())));
    let rebuilt: Box<dyn Read + Send> = Box::new(io::Cursor::new(head).chain(rest));
    *reader = BufReader::with_capacity(256 * 1024, rebuilt);
    Ok(gzip)
}

struct FailingReader(Option<io::Error>);

impl Read for FailingReader {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        match self.0.take() {
            Some(e) => Err(e),
            None => Ok(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn read_all(input: Input) -> Vec<u8> {
        let mut out = Vec::new();
        let mut reader = input.reader;
        reader.read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn plain_passes_through() {
        let input = Input::from_reader("t", io::Cursor::new(b"a\nb\n".to_vec()));
        assert!(!input.gzip);
        assert_eq!(read_all(input), b"a\nb\n");
    }

    #[test]
    fn concatenated_gzip_members_are_all_read() {
        let mut data = gz(b"first\n");
        data.extend(gz(b"second\n"));
        let input = Input::from_reader("t", io::Cursor::new(data));
        assert!(input.gzip);
        assert_eq!(read_all(input), b"first\nsecond\n");
    }

    #[test]
    fn single_byte_input_is_not_lost() {
        let input = Input::from_reader("t", io::Cursor::new(vec![0x1f]));
        assert!(!input.gzip);
        assert_eq!(read_all(input), vec![0x1f]);
    }
}
