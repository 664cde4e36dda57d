//! Bounded reads and atomic writes of key and certificate files.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;

/// Errors reading or writing key and certificate files.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The OS refused an operation.
    #[error("{action} {path}: {error}")]
    Io {
        /// What we were doing.
        action: &'static str,
        /// The file.
        path: String,
        /// The OS error (in the message, deliberately not a `source`, so
        /// error chains do not print it twice).
        error: std::io::Error,
    },
    /// A secret file can be read by group or others.
    #[error(
        "{path} has mode {mode:04o}; a secret key must not be readable by group or others: run `chmod 600 {path}`"
    )]
    Permissions {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is larger than the limit for its kind.
    #[error("{path} is {len} bytes; files of this kind are at most {max} bytes")]
    TooLarge {
        /// The file.
        path: String,
        /// Its size.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// Refusing to overwrite an existing file.
    #[error("{path} already exists; choose another path or remove it first")]
    Exists {
        /// The file.
        path: String,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FileError {
    let path = path.display().to_string();
    move |error| FileError::Io {
        action,
        path,
        error,
    }
}

/// Reads a secret file of at most `max_len` bytes, refusing it when group
/// or others may read it (as ssh does).
pub fn read_secret_file(path: &Path, max_len: u64) -> Result<Vec<u8>, FileError> {
    read_limited(path, max_len, true)
}

/// Reads a public file (a certificate, a bundle) of at most `max_len` bytes.
pub fn read_public_file(path: &Path, max_len: u64) -> Result<Vec<u8>, FileError> {
    read_limited(path, max_len, false)
}

fn read_limited(path: &Path, max_len: u64, secret: bool) -> Result<Vec<u8>, FileError> {
    use std::os::unix::fs::PermissionsExt;
    let file = fs::File::open(path).map_err(io_err("cannot open", path))?;
    let meta = file.metadata().map_err(io_err("cannot stat", path))?;
    let mode = meta.permissions().mode() & 0o7777;
    if secret && mode & 0o077 != 0 {
        return Err(FileError::Permissions {
            path: path.display().to_string(),
            mode,
        });
    }
    let too_large = |len| FileError::TooLarge {
        path: path.display().to_string(),
        len,
        max: max_len,
    };
    if meta.len() > max_len {
        return Err(too_large(meta.len()));
    }
    let mut buf = Vec::new();
    file.take(max_len + 1)
        .read_to_end(&mut buf)
        .map_err(io_err("cannot read", path))?;
    if buf.len() as u64 > max_len {
        return Err(too_large(buf.len() as u64));
    }
    Ok(buf)
}

/// Writes a secret with mode 0600, atomically (see [`write_file_atomic`]).
pub fn write_secret_file(path: &Path, contents: &[u8], overwrite: bool) -> Result<(), FileError> {
    write_file_atomic(path, contents, 0o600, overwrite)
}

/// Writes `contents` to `path` atomically: a temporary file in the same
/// directory created with `mode`, fsync, rename, fsync of the directory.
/// Refuses to replace an existing file unless `overwrite` is set.
pub fn write_file_atomic(
    path: &Path,
    contents: &[u8],
    mode: u32,
    overwrite: bool,
) -> Result<(), FileError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".weft-tmp-")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(io_err("cannot create a temporary file in", dir))?;
    tmp.write_all(contents)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(io_err("cannot write", tmp.path()))?;
    let persisted = if overwrite {
        tmp.persist(path).map(drop)
    } else {
        tmp.persist_noclobber(path).map(drop)
    };
    persisted.map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            FileError::Exists {
                path: path.display().to_string(),
            }
        } else {
            io_err("cannot rename into", path)(e.error)
        }
    })?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("cannot sync directory", dir))
}
