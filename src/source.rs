//! Sources: where bytes come from. A source is a named reader (a file, standard input,
//! later a Loki stream); gzip is recognised by its magic bytes, not by the file name, so
//! rotated `access.log.2.gz` and a gzip piped to stdin both work. Concatenated gzip members
//! (what `cat a.gz b.gz` and many rotators produce) are all read.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Decompressed bytes per compressed byte beyond which a gzip input is taken for a bomb.
/// Real access logs compress 10:1 to 30:1, very repetitive ones rarely past 200:1;
/// DEFLATE's own ceiling is about 1032:1, which only crafted input approaches.
pub const MAX_GZIP_RATIO: u64 = 500;
/// Below this much output the ratio is not judged (small files can look extreme).
const GZIP_RATIO_GRACE: u64 = 64 << 20;

/// One input to scan: a display name (used as the record's source) and its bytes.
pub struct Input {
    /// The name reports use: the path as given, or `stdin`.
    pub name: String,
    /// The decompressed byte stream.
    pub reader: Box<dyn Read + Send>,
    /// Whether the bytes were gzip-compressed.
    pub gzip: bool,
    /// The file it was opened from, for following it (`scan --follow FILE`).
    pub file: Option<OpenedFile>,
}

/// A file as it was opened: its path, and which file the path named then.
pub struct OpenedFile {
    pub path: PathBuf,
    id: Option<FileId>,
}

/// Device and inode (Unix): the same path names another file once logrotate has moved the
/// old one away and created a new one.
type FileId = (u64, u64);

fn file_id(meta: &std::fs::Metadata) -> Option<FileId> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((meta.dev(), meta.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        None
    }
}

/// Standard input, read through its own descriptor (no lock and no 8 KiB buffer per
/// read); when it is a pipe, the pipe enlarged to 1 MiB where the OS allows.
fn stdin() -> Box<dyn Read + Send> {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        if let Ok(fd) = io::stdin().as_fd().try_clone_to_owned() {
            // A pipe holds 64 KiB by default, so writer and reader take turns every
            // 64 KiB. 1 MiB is the unprivileged limit (/proc/sys/fs/pipe-max-size) on a
            // stock kernel. Best effort: a file, a terminal or a lower limit is fine as is.
            #[cfg(target_os = "linux")]
            let _ = rustix::pipe::fcntl_setpipe_size(&fd, 1 << 20);
            return Box::new(File::from(fd));
        }
    }
    Box::new(io::stdin())
}

impl Input {
    /// Opens `path`, or standard input for `-`.
    pub fn open(path: &Path) -> Result<Input> {
        if path == Path::new("-") {
            return Ok(Input::from_reader("stdin", stdin()));
        }
        if path.is_dir() {
            let message =
                format!("{} is a directory: name the log files in it (such as {0}/*.log)", path.display());
            return Err(Error::option("input", message));
        }
        let file = File::open(path).map_err(|source| Error::Input { path: path.to_path_buf(), source })?;
        let id = file.metadata().ok().as_ref().and_then(file_id);
        let mut input = Input::sniff(path.display().to_string(), Box::new(file))
            .map_err(|source| Error::Input { path: PathBuf::from(path), source })?;
        input.file = Some(OpenedFile { path: path.to_path_buf(), id });
        Ok(input)
    }

    /// This input read as `tail -F` reads a file (see [`FollowedFile`]): a plain file
    /// never ends; standard input and gzip (which rotated logs are) end as before.
    pub fn followed(self) -> Input {
        match self.file {
            Some(file) if !self.gzip => Input {
                reader: Box::new(FollowedFile { file, reader: self.reader, consumed: 0 }),
                file: None,
                ..self
            },
            file => Input { file, ..self },
        }
    }

    /// Wraps an already-open reader, sniffing it for gzip. Used for stdin and tests.
    pub fn from_reader(name: &str, reader: impl Read + Send + 'static) -> Input {
        match Input::sniff(name.to_string(), Box::new(reader)) {
            Ok(input) => input,
            // A read error while sniffing resurfaces on the first real read.
            Err(e) => Input {
                name: name.to_string(),
                reader: Box::new(FailingReader(Some(e))),
                gzip: false,
                file: None,
            },
        }
    }

    fn sniff(name: String, reader: Box<dyn Read + Send>) -> io::Result<Input> {
        let compressed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted: Box<dyn Read + Send> = Box::new(Counting { inner: reader, counter: compressed.clone() });
        // 256 KiB reads: large enough that per-read overhead vanishes on fast inputs.
        let mut buffered = BufReader::with_capacity(256 * 1024, counted);
        let gzip = peek_gzip(&mut buffered)?;
        let reader: Box<dyn Read + Send> = if gzip {
            let inflate = flate2::bufread::MultiGzDecoder::new(buffered);
            Box::new(BombGuard { inner: inflate, compressed, out: 0 })
        } else {
            Box::new(buffered)
        };
        Ok(Input { name, reader, gzip, file: None })
    }
}

/// How long a followed file at its end waits before it is looked at again.
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// A file read as `tail -F` reads it (`scan --follow FILE`): at its end it waits for more
/// instead of ending. When its path names another file (logrotate moved it away and
/// created a new one) or a shorter one (copytruncate), reading goes on from the start of
/// what the path names now. As with `tail -F`, what is written to the old file after the
/// switch (nginx writes there until it reopens its logs) is not read, and a file
/// truncated and refilled past the point read between two looks is not seen as truncated.
struct FollowedFile {
    file: OpenedFile,
    reader: Box<dyn Read + Send>,
    /// Bytes read from the current file: where its end was when reading paused there.
    consumed: u64,
}

impl Read for FollowedFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.reader.read(buf)?;
            if n > 0 || buf.is_empty() {
                self.consumed += n as u64;
                return Ok(n);
            }
            if !self.reopen_if_replaced() {
                std::thread::sleep(FOLLOW_POLL);
            }
        }
    }
}

impl FollowedFile {
    /// Whether the path now names another file than the one read, or a shorter one. A
    /// path that names nothing (between the move and the new file) is waited for.
    fn replaced(&self) -> bool {
        std::fs::metadata(&self.file.path)
            .is_ok_and(|meta| file_id(&meta) != self.file.id || meta.len() < self.consumed)
    }

    /// Reads from the start of the file the path names, if it was replaced.
    fn reopen_if_replaced(&mut self) -> bool {
        if !self.replaced() {
            return false;
        }
        let Ok(file) = File::open(&self.file.path) else { return false };
        self.file.id = file.metadata().ok().as_ref().and_then(file_id);
        self.reader = Box::new(BufReader::with_capacity(256 * 1024, file));
        self.consumed = 0;
        true
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

/// A reader that adds the bytes passing through to a shared counter (compressed bytes
/// for the bomb guard, bytes read for progress).
pub struct Counting<R> {
    pub inner: R,
    pub counter: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// Stops a gzip input whose output outgrows [`MAX_GZIP_RATIO`] times its input: what came
/// before is scanned, the rest is reported as a read error.
struct BombGuard<R> {
    inner: R,
    compressed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    out: u64,
}

impl<R: Read> Read for BombGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out += n as u64;
        let compressed = self.compressed.load(std::sync::atomic::Ordering::Relaxed).max(1);
        if self.out > GZIP_RATIO_GRACE && self.out / compressed > MAX_GZIP_RATIO {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "gzip expands more than {MAX_GZIP_RATIO}:1 ({} bytes from {compressed}): \
                     taken for a decompression bomb and not read further",
                    self.out
                ),
            ));
        }
        Ok(n)
    }
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
    fn a_gzip_bomb_stops_at_the_ratio() {
        // 200 MiB of zeros compress to about 200 KiB: 1000:1.
        let mut enc = GzEncoder::new(Vec::new(), Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..200 {
            enc.write_all(&zeros).unwrap();
        }
        let bomb = enc.finish().unwrap();
        let mut reader = Input::from_reader("bomb.gz", io::Cursor::new(bomb)).reader;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        let err = loop {
            match reader.read(&mut buf) {
                Ok(0) => panic!("the whole bomb was inflated ({total} bytes)"),
                Ok(n) => total += n as u64,
                Err(e) => break e,
            }
        };
        assert!(err.to_string().contains("decompression bomb"), "{err}");
        assert!(total < 100 << 20, "{total} bytes were inflated first");
    }

    #[test]
    fn single_byte_input_is_not_lost() {
        let input = Input::from_reader("t", io::Cursor::new(vec![0x1f]));
        assert!(!input.gzip);
        assert_eq!(read_all(input), vec![0x1f]);
    }
}
