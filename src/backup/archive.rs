//! The custom-format archive `pg_dump --format=custom` writes, as far as a
//! parallel restore needs it: where each table's data starts.
//!
//! pg_dump records those offsets in the table of contents only when it can
//! seek back in its output at the end; ours writes to a pipe (into zstd,
//! and age), so every entry says "offset not set". `pg_restore -j` then
//! knows no table's size, starts the tables' data in dump order, and the
//! largest one (the audit log, created last) starts last: the restore ends
//! with one job copying it while the other cores wait. [`add_data_offsets`]
//! fills the offsets into the decompressed copy a parallel restore reads:
//! it reads the header and the table of contents, walks the data blocks
//! (their headers only), and writes each block's position into its entry,
//! in place, as pg_dump does when it can seek. pg_restore then orders the
//! work by size, largest first (`_PrepParallelRestore` in
//! `pg_backup_custom.c`), and seeks straight to each block instead of
//! scanning for it. It checks each block's id when it gets there.
//!
//! The layout is PostgreSQL's `pg_backup_archiver.c` (`WriteHead`,
//! `WriteToc`) and `pg_backup_custom.c` (`_WriteExtraToc`, `_StartData`),
//! archive versions 1.12 to 1.16 (PostgreSQL 11 to 17+). Any other version,
//! or anything that does not parse exactly, leaves the file unchanged: the
//! restore works as before, only without the ordering.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek};
use std::os::unix::fs::FileExt as _;
use std::path::Path;

/// `K_OFFSET_POS_NOT_SET`, `K_OFFSET_POS_SET`, `K_OFFSET_NO_DATA`.
const OFFSET_NOT_SET: u8 = 1;
const OFFSET_SET: u8 = 2;
const OFFSET_NO_DATA: u8 = 3;
/// Block types after the table of contents: `BLK_DATA`, `BLK_BLOBS`.
const BLOCK_DATA: u8 = 1;
const BLOCK_BLOBS: u8 = 3;
/// `archCustom` in the header's format byte.
const FORMAT_CUSTOM: u8 = 1;

/// What [`add_data_offsets`] did.
#[derive(Debug, PartialEq, Eq)]
pub struct Offsets {
    /// Entries whose offset it wrote.
    pub added: usize,
    /// Entries that had one already (pg_dump wrote to a seekable file).
    pub present: usize,
}

/// Writes the position of every data block into its table-of-contents
/// entry in the custom-format archive at `path` (see the module doc).
///
/// # Errors
/// The file cannot be read or written, or is not a custom-format archive
/// of a known version (`InvalidData`, naming what did not parse). Nothing
/// is written unless the whole file parsed.
pub fn add_data_offsets(path: &Path) -> io::Result<Offsets> {
    let file = File::options().read(true).write(true).open(path)?;
    let mut reader = Reader::new(BufReader::with_capacity(1 << 20, &file));
    let entries = reader.table_of_contents()?;
    let blocks = reader.data_blocks()?;
    let mut offsets = Offsets {
        added: 0,
        present: 0,
    };
    let mut patches = Vec::new();
    for entry in &entries {
        match entry.state {
            OFFSET_SET => offsets.present += 1,
            OFFSET_NOT_SET => {
                if let Some(&(_, position)) = blocks.iter().find(|(id, _)| *id == entry.dump_id) {
                    patches.push((entry.state_at, position));
                }
            }
            _ => {}
        }
    }
    for (at, position) in patches {
        let mut field = [0u8; 9];
        field[0] = OFFSET_SET;
        field[1..].copy_from_slice(&position.to_le_bytes());
        file.write_all_at(&field, at)?;
        offsets.added += 1;
    }
    Ok(offsets)
}

/// One table-of-contents entry: its dump id and where its offset field is.
struct Entry {
    dump_id: i64,
    state: u8,
    /// File position of the offset field's state byte (then 8 offset bytes).
    state_at: u64,
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Reads the archive's primitives (`ReadByte`, `ReadInt`, `ReadStr`,
/// `ReadOffset`), keeping the position.
struct Reader<R> {
    inner: R,
    position: u64,
    version: (u8, u8),
    int_size: u8,
}

impl<R: Read + Seek> Reader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            position: 0,
            version: (0, 0),
            int_size: 4,
        }
    }

    fn byte(&mut self) -> io::Result<u8> {
        let mut one = [0u8; 1];
        self.inner.read_exact(&mut one)?;
        self.position += 1;
        Ok(one[0])
    }

    /// The next byte, or `None` at the end of the file.
    fn byte_or_end(&mut self) -> io::Result<Option<u8>> {
        let mut one = [0u8; 1];
        loop {
            return match self.inner.read(&mut one) {
                Ok(0) => Ok(None),
                Ok(_) => {
                    self.position += 1;
                    Ok(Some(one[0]))
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => Err(err),
            };
        }
    }

    /// `ReadInt`: a sign byte, then `int_size` bytes, least significant first.
    fn int(&mut self) -> io::Result<i64> {
        let negative = self.byte()? != 0;
        let mut value: i64 = 0;
        for shift in 0..self.int_size {
            value |= i64::from(self.byte()?) << (8 * u32::from(shift));
        }
        Ok(if negative { -value } else { value })
    }

    fn skip(&mut self, bytes: i64) -> io::Result<()> {
        if bytes < 0 {
            return Err(invalid(format!(
                "a negative length ({bytes}) at byte {}",
                self.position
            )));
        }
        self.inner.seek_relative(bytes)?;
        self.position += u64::try_from(bytes).unwrap_or(0);
        Ok(())
    }

    /// `ReadStr`: a length (negative: NULL), then that many bytes. Returns
    /// whether the string was NULL.
    fn skip_string(&mut self) -> io::Result<bool> {
        let length = self.int()?;
        if length < 0 {
            return Ok(true);
        }
        self.skip(length)?;
        Ok(false)
    }

    fn string(&mut self) -> io::Result<Vec<u8>> {
        let length = self.int()?;
        let length = usize::try_from(length).map_err(|_| invalid("a NULL string"))?;
        if length > 1 << 20 {
            return Err(invalid(format!("a string of {length} bytes")));
        }
        let mut text = vec![0u8; length];
        self.inner.read_exact(&mut text)?;
        self.position += length as u64;
        Ok(text)
    }

    fn at_least(&self, minor: u8) -> bool {
        self.version >= (1, minor)
    }

    /// The header (`ReadHead`) and the table of contents (`ReadToc`).
    fn table_of_contents(&mut self) -> io::Result<Vec<Entry>> {
        let mut magic = [0u8; 5];
        self.inner.read_exact(&mut magic)?;
        self.position += 5;
        if &magic != b"PGDMP" {
            return Err(invalid("not a pg_dump archive (no PGDMP at the start)"));
        }
        let (major, minor, _revision) = (self.byte()?, self.byte()?, self.byte()?);
        self.version = (major, minor);
        if major != 1 || !(12..=16).contains(&minor) {
            return Err(invalid(format!("archive version {major}.{minor}")));
        }
        self.int_size = self.byte()?;
        if !(1..=8).contains(&self.int_size) {
            return Err(invalid(format!("integer size {}", self.int_size)));
        }
        let offset_size = self.byte()?;
        if offset_size != 8 {
            return Err(invalid(format!("offset size {offset_size}")));
        }
        let format = self.byte()?;
        if format != FORMAT_CUSTOM {
            return Err(invalid(format!(
                "format {format} (custom is {FORMAT_CUSTOM})"
            )));
        }
        if self.at_least(15) {
            self.byte()?; // compression algorithm
        } else {
            self.int()?; // compression level
        }
        for _ in 0..7 {
            self.int()?; // creation time: sec, min, hour, mday, mon, year, isdst
        }
        self.skip_string()?; // database name
        self.skip_string()?; // server version
        self.skip_string()?; // pg_dump version
        let count = self.int()?;
        if !(0..=10_000_000).contains(&count) {
            return Err(invalid(format!("{count} table-of-contents entries")));
        }
        let mut entries = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
        for _ in 0..count {
            let dump_id = self.int()?;
            if dump_id <= 0 {
                return Err(invalid(format!(
                    "entry id {dump_id} at byte {}",
                    self.position
                )));
            }
            self.int()?; // had dumper
            self.skip_string()?; // table oid
            self.skip_string()?; // oid
            self.skip_string()?; // tag
            self.skip_string()?; // desc
            self.int()?; // section
            self.skip_string()?; // definition
            self.skip_string()?; // drop statement
            self.skip_string()?; // copy statement
            self.skip_string()?; // namespace
            self.skip_string()?; // tablespace
            if self.at_least(14) {
                self.skip_string()?; // table access method
            }
            if self.at_least(16) {
                self.int()?; // relkind
            }
            self.skip_string()?; // owner
            if self.string()? != b"false" {
                return Err(invalid(format!(
                    "entry {dump_id}: WITH OIDS is not \"false\""
                )));
            }
            while !self.skip_string()? {} // dependencies, up to a NULL
            let state_at = self.position;
            let state = self.byte()?;
            if ![OFFSET_NOT_SET, OFFSET_SET, OFFSET_NO_DATA].contains(&state) {
                return Err(invalid(format!(
                    "entry {dump_id}: offset state {state} at byte {state_at}"
                )));
            }
            self.skip(8)?;
            entries.push(Entry {
                dump_id,
                state,
                state_at,
            });
        }
        Ok(entries)
    }

    /// The data blocks after the table of contents, to the end of the file:
    /// each one's dump id and position.
    fn data_blocks(&mut self) -> io::Result<Vec<(i64, u64)>> {
        let mut blocks = Vec::new();
        loop {
            let start = self.position;
            let Some(kind) = self.byte_or_end()? else {
                return Ok(blocks);
            };
            let dump_id = self.int()?;
            match kind {
                BLOCK_DATA => self.skip_chunks()?,
                BLOCK_BLOBS => {
                    // Per large object: its oid, then its chunks; oid 0 ends.
                    while self.int()? != 0 {
                        self.skip_chunks()?;
                    }
                }
                _ => {
                    return Err(invalid(format!("block type {kind} at byte {start}")));
                }
            }
            blocks.push((dump_id, start));
        }
    }

    /// A block's chunks: a length, that many bytes; length 0 ends.
    fn skip_chunks(&mut self) -> io::Result<()> {
        loop {
            let length = self.int()?;
            if length == 0 {
                return Ok(());
            }
            self.skip(length)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes archives the way pg_dump does (`WriteInt`, `WriteStr`, …), so
    /// the tests can say what every byte is.
    struct Writer {
        out: Vec<u8>,
        minor: u8,
    }

    impl Writer {
        fn int(&mut self, value: i64) {
            self.out.push(u8::from(value < 0));
            let magnitude = value.unsigned_abs();
            self.out.extend_from_slice(&magnitude.to_le_bytes()[..4]);
        }

        fn string(&mut self, text: Option<&str>) {
            match text {
                None => self.int(-1),
                Some(text) => {
                    self.int(i64::try_from(text.len()).expect("short"));
                    self.out.extend_from_slice(text.as_bytes());
                }
            }
        }

        fn header(minor: u8, entries: i64) -> Self {
            let mut w = Self {
                out: b"PGDMP".to_vec(),
                minor,
            };
            w.out.extend_from_slice(&[1, minor, 0, 4, 8, FORMAT_CUSTOM]);
            if minor >= 15 {
                w.out.push(0);
            } else {
                w.int(0);
            }
            for value in [36, 22, 6, 26, 10, 126, 0] {
                w.int(value);
            }
            w.string(Some("pagodirecto"));
            w.string(Some("15.18"));
            w.string(Some("15.18"));
            w.int(entries);
            w
        }

        fn entry(&mut self, dump_id: i64, desc: &str, state: u8, deps: &[&str]) {
            self.int(dump_id);
            self.int(i64::from(state != OFFSET_NO_DATA));
            self.string(Some("0"));
            self.string(Some("0"));
            self.string(Some(desc));
            self.string(Some(desc));
            self.int(2);
            self.string(Some(""));
            self.string(Some(""));
            self.string(None);
            self.string(Some("public"));
            self.string(Some(""));
            if self.minor >= 14 {
                self.string(Some("heap"));
            }
            if self.minor >= 16 {
                self.int(i64::from(b'r'));
            }
            self.string(Some("postgres"));
            self.string(Some("false"));
            for dep in deps {
                self.string(Some(dep));
            }
            self.string(None);
            self.out.push(state);
            self.out.extend_from_slice(&[0; 8]);
        }

        /// A data block; returns its position.
        fn data(&mut self, dump_id: i64, chunks: &[&[u8]]) -> u64 {
            let at = self.out.len() as u64;
            self.out.push(BLOCK_DATA);
            self.int(dump_id);
            for chunk in chunks {
                self.int(i64::try_from(chunk.len()).expect("short"));
                self.out.extend_from_slice(chunk);
            }
            self.int(0);
            at
        }
    }

    fn read_back(bytes: &[u8]) -> Vec<Entry> {
        Reader::new(io::Cursor::new(bytes))
            .table_of_contents()
            .expect("parses")
    }

    #[test]
    fn every_data_block_gets_its_position_and_nothing_else_changes() {
        for minor in [12, 14, 15, 16] {
            let mut w = Writer::header(minor, 4);
            w.entry(10, "SCHEMA", OFFSET_NO_DATA, &[]);
            w.entry(11, "TABLE DATA", OFFSET_NOT_SET, &["10"]);
            w.entry(12, "TABLE DATA", OFFSET_NOT_SET, &["10", "11"]);
            w.entry(13, "TABLE DATA", OFFSET_NOT_SET, &[]); // its block is missing
            let first = w.data(11, &[b"1\tone\n", b"2\ttwo\n"]);
            let big = vec![b'x'; 70_000];
            let second = w.data(12, &[&big]);
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("a.pgdump");
            std::fs::write(&path, &w.out).expect("write");

            let offsets = add_data_offsets(&path).expect("patched");
            assert_eq!(
                offsets,
                Offsets {
                    added: 2,
                    present: 0
                },
                "1.{minor}"
            );
            let patched = std::fs::read(&path).expect("read");
            assert_eq!(patched.len(), w.out.len());
            let entries = read_back(&patched);
            let found: Vec<(i64, u8, u64)> = entries
                .iter()
                .map(|e| {
                    let at = usize::try_from(e.state_at).expect("small") + 1;
                    let bytes: [u8; 8] = patched[at..at + 8].try_into().expect("8 bytes");
                    (e.dump_id, e.state, u64::from_le_bytes(bytes))
                })
                .collect();
            assert_eq!(
                found,
                [
                    (10, OFFSET_NO_DATA, 0),
                    (11, OFFSET_SET, first),
                    (12, OFFSET_SET, second),
                    (13, OFFSET_NOT_SET, 0),
                ],
                "1.{minor}"
            );
            // Outside the offset fields, every byte is as it was.
            let fields: Vec<usize> = entries
                .iter()
                .map(|e| usize::try_from(e.state_at).expect("small"))
                .collect();
            for (i, (a, b)) in w.out.iter().zip(&patched).enumerate() {
                if !fields.iter().any(|&f| (f..f + 9).contains(&i)) {
                    assert_eq!(a, b, "byte {i} changed (1.{minor})");
                }
            }
            // A second pass finds them set.
            assert_eq!(
                add_data_offsets(&path).expect("again"),
                Offsets {
                    added: 0,
                    present: 2
                }
            );
        }
    }

    #[test]
    fn what_does_not_parse_is_left_unchanged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = Writer::header(14, 1);
        w.entry(11, "TABLE DATA", OFFSET_NOT_SET, &[]);
        w.data(11, &[b"row\n"]);
        let good = w.out.clone();

        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut newer = good.clone();
        newer[6] = 17;
        cases.push(("archive version 1.17", newer));
        let mut tar = good.clone();
        tar[10] = 3;
        cases.push(("format 3", tar));
        let mut truncated = good.clone();
        truncated.truncate(good.len() - 3);
        cases.push(("", truncated));
        let mut unknown_block = good.clone();
        unknown_block.extend_from_slice(&[9, 0, 1, 0, 0, 0]);
        cases.push(("block type 9", unknown_block));
        cases.push(("PGDMP", b"-- plain SQL\n".to_vec()));
        for (expected, bytes) in cases {
            let path = dir.path().join("bad.pgdump");
            std::fs::write(&path, &bytes).expect("write");
            let err = add_data_offsets(&path).expect_err(expected);
            assert!(err.to_string().contains(expected), "{err} ({expected})");
            assert_eq!(std::fs::read(&path).expect("read"), bytes, "{expected}");
        }
    }
}
