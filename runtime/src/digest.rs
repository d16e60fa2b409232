//! The integrity of cache entries: a digest of every `.cwasm`, recorded when
//! the entry is written and checked before it is mapped.
//!
//! Wasmtime maps a `.cwasm` and runs the machine code it finds there: it
//! checks the header against the engine, not the code. An entry whose bytes
//! changed after it was written (a disk error, a stray write, one module's
//! entry copied over another's name) would run garbage, and every child
//! would die of SIGSEGV or SIGILL on every request to it. So each entry has a
//! record beside it, `<entry>.sum`, written before the entry is renamed into
//! place, holding the entry's file name (the key it was written under: the
//! module's hash and the engine's) and the SHA-256 of its whole contents. An
//! entry is used only when both match.
//!
//! This catches accidents, not an adversary: whoever can write the cache
//! directory can write a matching record too. The directory must be writable
//! only by the user Apache's parent runs as.
//!
//! Nothing here creates Wasmtime state: it is safe in Apache's parent.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Appended to an entry's file name to name its record.
pub const SUFFIX: &str = ".sum";

/// First line of a record; the number changes with the format.
const MAGIC: &str = "mod_wasm cache record 1";

/// The record of `entry`: the same path with [`SUFFIX`] appended.
pub fn record_path(entry: &Path) -> PathBuf {
    let mut name = entry.as_os_str().to_owned();
    name.push(SUFFIX);
    PathBuf::from(name)
}

/// What a record says about its entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The file name the entry was written under.
    pub entry: String,
    /// Its length in bytes.
    pub len: u64,
    /// The SHA-256 of its whole contents.
    pub sha256: [u8; 32],
    /// What it was compiled from and by; absent in records of older
    /// versions, which named entries the same way.
    pub origin: Option<Origin>,
}

/// What an entry was compiled from and by: lets a server that finds no
/// entry under its own name say why an entry of the same module is not
/// its own (another Wasmtime, other settings, another CPU) without
/// mapping it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The SHA-256 of the module's bytes.
    pub module: [u8; 32],
    /// The engine that compiled it, as [`crate::engine::describe`] says.
    pub engine: String,
}

/// The SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl Record {
    /// The record of `bytes` written as the entry named `entry`.
    pub fn of(entry: &str, bytes: &[u8]) -> Record {
        Record {
            entry: entry.to_owned(),
            len: bytes.len() as u64,
            sha256: sha256(bytes),
            origin: None,
        }
    }

    /// This record, saying what the entry was compiled from and by.
    pub fn with_origin(self, origin: Origin) -> Record {
        Record {
            origin: Some(origin),
            ..self
        }
    }

    /// The record as it is stored: one `key value` line per field.
    pub fn to_text(&self) -> String {
        let mut text = format!(
            "{MAGIC}\nentry {}\nlen {}\nsha256 {}\n",
            self.entry,
            self.len,
            hex(&self.sha256)
        );
        if let Some(o) = &self.origin {
            text.push_str(&format!("module {}\nengine {}\n", hex(&o.module), o.engine));
        }
        text
    }

    /// Parses [`Record::to_text`]'s output; `None` for anything else.
    pub fn parse(text: &str) -> Option<Record> {
        let mut lines = text.lines();
        if lines.next()? != MAGIC {
            return None;
        }
        let mut field = |key: &str| {
            lines
                .next()?
                .strip_prefix(key)?
                .strip_prefix(' ')
                .map(str::to_owned)
        };
        let entry = field("entry")?;
        let len = field("len")?.parse().ok()?;
        let sha256 = unhex(&field("sha256")?)?;
        // Optional: a record without them is an older version's, still valid.
        let origin = match field("module") {
            Some(module) => Some(Origin {
                module: unhex(&module)?,
                engine: field("engine")?,
            }),
            None => None,
        };
        Some(Record {
            entry,
            len,
            sha256,
            origin,
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The length and SHA-256 of `file`'s whole contents, read with `pread` so
/// that the descriptor's offset (shared with its duplicates) does not matter.
pub fn digest_of(file: &File) -> io::Result<(u64, [u8; 32])> {
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let n = match file.read_at(&mut buf, offset) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        sha.update(&buf[..n]);
        offset += n as u64;
    }
    Ok((offset, sha.finalize().into()))
}

/// Why an entry cannot be used as it is.
#[derive(Debug)]
pub enum Damage {
    /// There is no entry by that name: nothing is wrong, it is a miss.
    Absent,
    /// The entry exists but has no record beside it.
    NoRecord,
    /// The record is not one this version writes.
    BadRecord,
    /// The record is another entry's: a copy over another module's name.
    WrongName(String),
    /// The contents are not the ones recorded.
    WrongContents,
    /// The entry or its record cannot be read.
    Unreadable(io::Error),
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::Absent => write!(f, "it does not exist"),
            Damage::NoRecord => write!(
                f,
                "no digest was recorded for it (written by an older mod_wasm, \
                 or its {SUFFIX} file was removed)"
            ),
            Damage::BadRecord => write!(f, "its digest record is unreadable"),
            Damage::WrongName(other) => write!(
                f,
                "its digest record belongs to {other}: a copy of another entry"
            ),
            Damage::WrongContents => write!(
                f,
                "its contents do not match the digest recorded when it was written"
            ),
            Damage::Unreadable(e) => write!(f, "it cannot be read: {e}"),
        }
    }
}

/// Opens `entry` read-only (close-on-exec) and checks it against its record
/// through the open file: what was checked is what a later mapping of this
/// file sees, whatever happens to the name afterwards.
///
/// # Errors
/// The [`Damage`] found; [`Damage::Absent`] when there is no such entry.
pub fn open_verified(entry: &Path) -> Result<File, Damage> {
    let file = File::open(entry).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Damage::Absent,
        _ => Damage::Unreadable(e),
    })?;
    let text = std::fs::read_to_string(record_path(entry)).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Damage::NoRecord,
        _ => Damage::Unreadable(e),
    })?;
    let record = Record::parse(&text).ok_or(Damage::BadRecord)?;
    let name = entry
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if record.entry != name {
        return Err(Damage::WrongName(record.entry));
    }
    let (len, sha256) = digest_of(&file).map_err(Damage::Unreadable)?;
    if len != record.len || sha256 != record.sha256 {
        return Err(Damage::WrongContents);
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn tmpdir(name: &str) -> crate::scratch::Scratch {
        crate::scratch::Scratch::new(&format!("digest-{name}"))
    }

    fn write_entry(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let entry = dir.join(name);
        fs::write(&entry, bytes).unwrap();
        fs::write(record_path(&entry), Record::of(name, bytes).to_text()).unwrap();
        entry
    }

    #[test]
    fn a_record_round_trips_and_garbage_is_refused() {
        let r = Record::of("a-00.cwasm", b"code");
        assert_eq!(Record::parse(&r.to_text()), Some(r.clone()));
        assert_eq!(Record::parse(""), None);
        assert_eq!(Record::parse(&r.to_text().replace("len 4", "len x")), None);
        assert_eq!(
            Record::parse(&r.to_text().replace("sha256 ", "sha256 z")),
            None
        );
        let o = r.clone().with_origin(Origin {
            module: sha256(b"wasm"),
            engine: "wasmtime=48.0.8 cpu=avx2,sse4.2".into(),
        });
        assert_eq!(Record::parse(&o.to_text()), Some(o.clone()));
        // A module line without its engine is not a record this version wrote.
        let cut = o.to_text();
        let cut = &cut[..cut.find("engine").unwrap()];
        assert_eq!(Record::parse(cut), None);
        assert_eq!(
            record_path(Path::new("/c/a-00.cwasm")),
            Path::new("/c/a-00.cwasm.sum")
        );
    }

    #[test]
    fn an_intact_entry_opens_and_every_kind_of_damage_is_named() {
        let d = tmpdir("verify");
        let bytes = vec![7u8; 3 << 20];
        let entry = write_entry(&d, "a-00.cwasm", &bytes);
        assert!(open_verified(&entry).is_ok());

        let mut flipped = bytes.clone();
        flipped[1 << 20] ^= 1;
        fs::write(&entry, &flipped).unwrap();
        assert!(matches!(open_verified(&entry), Err(Damage::WrongContents)));
        fs::write(&entry, &bytes[..bytes.len() - 1]).unwrap();
        assert!(matches!(open_verified(&entry), Err(Damage::WrongContents)));

        // Another entry and its record, copied over this one's name.
        let other = write_entry(&d, "b-11.cwasm", b"other code");
        fs::copy(&other, &entry).unwrap();
        fs::copy(record_path(&other), record_path(&entry)).unwrap();
        match open_verified(&entry) {
            Err(Damage::WrongName(n)) => assert_eq!(n, "b-11.cwasm"),
            r => panic!("{r:?}"),
        }

        fs::write(record_path(&entry), "not a record").unwrap();
        assert!(matches!(open_verified(&entry), Err(Damage::BadRecord)));
        fs::remove_file(record_path(&entry)).unwrap();
        assert!(matches!(open_verified(&entry), Err(Damage::NoRecord)));
        assert!(matches!(
            open_verified(&d.join("none.cwasm")),
            Err(Damage::Absent)
        ));
    }

    #[test]
    fn the_digest_does_not_depend_on_the_descriptors_offset() {
        use std::io::Read;
        let d = tmpdir("offset");
        let entry = write_entry(&d, "a-00.cwasm", b"0123456789");
        let mut file = open_verified(&entry).unwrap();
        let mut first = [0u8; 4];
        file.read_exact(&mut first).unwrap();
        let expected: [u8; 32] = Sha256::digest(b"0123456789").into();
        assert_eq!(digest_of(&file).unwrap(), (10, expected));
    }
}
