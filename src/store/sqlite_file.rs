//! Is the database path still the file the daemon opened, and how big are it and its WAL?
//!
//! A connection keeps writing to the file it opened even after that file was deleted or
//! replaced: `rm orderwatch.db*` leaves the daemon committing into unlinked files (gone at the
//! next start), and copying a backup over the live file makes the next checkpoint mix two
//! databases. So the writer asks [`DatabaseFile::check`] before it writes a batch and again
//! before it answers "stored", and the checkpointer before every checkpoint; the first failed
//! check is logged once at ERROR and is final: nothing is written through the old connection
//! again, every write answers 503, and readiness and liveness fail so the service manager
//! restarts the daemon on the file that is there now. Our `-wal` and `-shm`, if still at their
//! paths, are renamed aside (`….replaced-TIME`): SQLite would otherwise replay our WAL onto
//! whatever file now has the database's name at the next start.
//!
//! Two signs are checked:
//! - the device and inode behind the path of the database and of its `-wal` file, against
//!   those seen at open (catches deletion, `mv`, `cp --remove-destination`, rsync, editors);
//! - the file change counter in the database header (bytes 24..28), which every SQLite writer
//!   only ever increments (checkpoints included); a lower one means the file was overwritten in
//!   place with an older copy (plain `cp backup.db orderwatch.db`). A copy of a file whose
//!   counter is higher than the live one cannot be told from a checkpoint and is not caught.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The first 16 bytes of every SQLite database file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// How long a suspicious header is given to settle before it counts (a read can race a
/// checkpoint's write of page 1).
const HEADER_SETTLE: Duration = Duration::from_millis(20);

/// Which file a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    device: u64,
    inode: u64,
}

impl FileId {
    fn of(metadata: &std::fs::Metadata) -> Self {
        Self {
            device: metadata.dev(),
            inode: metadata.ino(),
        }
    }
}

/// The bytes the database and its WAL take on disk now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileSizes {
    /// The main database file.
    pub database: u64,
    /// The `-wal` file (0 when it is absent or truncated).
    pub wal: u64,
}

impl FileSizes {
    /// Both together: what counts toward `[database] max_size_bytes`.
    pub fn total(&self) -> u64 {
        self.database + self.wal
    }
}

/// The database file the daemon opened, watched for deletion and replacement.
#[derive(Debug)]
pub struct DatabaseFile {
    /// The configured path.
    path: PathBuf,
    /// The path of its write-ahead log.
    wal_path: PathBuf,
    /// What `path` named at open.
    database: FileId,
    /// What the WAL path named at open (`None` if there was no WAL then; one that appears
    /// later is accepted once and watched from then on).
    wal: OnceLock<FileId>,
    /// The path of the shared-memory index.
    shm_path: PathBuf,
    /// What it named at open, if it existed.
    shm: Option<FileId>,
    /// The database opened at start, read for its header (same inode as `database`).
    header: File,
    /// The highest file change counter seen in the header so far.
    change_counter: AtomicU32,
    /// Why the file no longer counts as ours; set once, never cleared.
    replaced: OnceLock<String>,
}

impl DatabaseFile {
    /// Notes which files `path` and its `-wal` name now. Call it right after the writer's
    /// connection opened them.
    pub fn watch(path: &Path) -> std::io::Result<Self> {
        let header = File::open(path)?;
        let database = FileId::of(&header.metadata()?);
        let wal_path = wal_path(path);
        let wal = OnceLock::new();
        if let Ok(metadata) = std::fs::metadata(&wal_path) {
            let _ = wal.set(FileId::of(&metadata));
        }
        let change_counter = read_change_counter(&header)?.unwrap_or(0);
        let shm_path = sibling(path, "-shm");
        let shm = std::fs::metadata(&shm_path).ok().map(|m| FileId::of(&m));
        Ok(Self {
            path: path.to_owned(),
            wal_path,
            database,
            wal,
            shm_path,
            shm,
            header,
            change_counter: AtomicU32::new(change_counter),
            replaced: OnceLock::new(),
        })
    }

    /// The database path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Why the file was found replaced, if it was (then nothing may be written through the
    /// connections opened on it).
    pub fn replaced(&self) -> Option<&str> {
        self.replaced.get().map(String::as_str)
    }

    /// Checks that the path still names the file opened at start, and returns the sizes of it
    /// and its WAL. A failure is final: it is logged once at ERROR and every later call fails
    /// with the same reason.
    pub fn check(&self) -> Result<FileSizes, String> {
        if let Some(reason) = self.replaced() {
            return Err(reason.to_owned());
        }
        self.inspect().map_err(|reason| {
            if self.replaced.set(reason.clone()).is_ok() {
                let set_aside = self.set_aside_our_journal();
                tracing::error!(
                    path = %self.path.display(),
                    %reason,
                    set_aside = %set_aside.join(", "),
                    "the database file was deleted or replaced while orderwatch ran; refusing every write from now on (restart orderwatch to open the file that is there now)"
                );
            }
            self.replaced().unwrap_or(&reason).to_owned()
        })
    }

    /// Renames our WAL and shared-memory index aside if the paths still name them; returns
    /// what it did, for the log.
    fn set_aside_our_journal(&self) -> Vec<String> {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
        let ours = [
            (&self.wal_path, self.wal.get().copied()),
            (&self.shm_path, self.shm),
        ];
        let mut done = Vec::new();
        for (path, id) in ours {
            let still_ours = std::fs::metadata(path).is_ok_and(|m| Some(FileId::of(&m)) == id);
            if !still_ours {
                continue;
            }
            let aside = sibling(path, &format!(".replaced-{stamp}"));
            match std::fs::rename(path, &aside) {
                Ok(()) => done.push(format!("{} -> {}", path.display(), aside.display())),
                Err(error) => {
                    done.push(format!("{} could not be renamed: {error}", path.display()))
                }
            }
        }
        done
    }

    fn inspect(&self) -> Result<FileSizes, String> {
        let database = std::fs::metadata(&self.path).map_err(|error| {
            format!(
                "{} is gone ({error}); the open file is deleted",
                self.path.display()
            )
        })?;
        if FileId::of(&database) != self.database {
            return Err(format!(
                "{} names another file than the one opened at start",
                self.path.display()
            ));
        }
        let wal = match std::fs::metadata(&self.wal_path) {
            Ok(metadata) => {
                let id = FileId::of(&metadata);
                if *self.wal.get_or_init(|| id) != id {
                    return Err(format!(
                        "{} names another file than the WAL opened at start",
                        self.wal_path.display()
                    ));
                }
                metadata.len()
            }
            Err(error) if self.wal.get().is_some() => {
                return Err(format!(
                    "{} is gone ({error}); the open WAL is deleted",
                    self.wal_path.display()
                ));
            }
            Err(_) => 0,
        };
        self.check_change_counter()?;
        Ok(FileSizes {
            database: database.len(),
            wal,
        })
    }

    /// The header's change counter must never go down; one that does (or a header that is no
    /// SQLite header) is read once more after a moment, since the first read can race a
    /// checkpoint writing page 1.
    fn check_change_counter(&self) -> Result<(), String> {
        let seen = self.change_counter.load(Ordering::Relaxed);
        let mut verdict = self.counter_verdict(seen);
        if verdict.is_err() {
            std::thread::sleep(HEADER_SETTLE);
            verdict = self.counter_verdict(seen);
        }
        let counter = verdict?;
        self.change_counter.fetch_max(counter, Ordering::Relaxed);
        Ok(())
    }

    fn counter_verdict(&self, seen: u32) -> Result<u32, String> {
        let path = self.path.display();
        match read_change_counter(&self.header) {
            Ok(Some(counter)) if counter >= seen => Ok(counter),
            Ok(Some(counter)) => Err(format!(
                "{path} was overwritten in place: its change counter went back from {seen} to {counter} (an older copy?)"
            )),
            Ok(None) => Err(format!(
                "{path} was overwritten in place: it no longer starts with a SQLite header"
            )),
            Err(error) => Err(format!("{path}: cannot read its header: {error}")),
        }
    }
}

/// The `-wal` file next to a database.
pub fn wal_path(database: &Path) -> PathBuf {
    sibling(database, "-wal")
}

fn sibling(database: &Path, suffix: &str) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The file change counter of a database header, or `None` if the file does not start with
/// one (too short, or not SQLite).
fn read_change_counter(file: &File) -> std::io::Result<Option<u32>> {
    let mut header = [0u8; 28];
    let mut filled = 0;
    while filled < header.len() {
        match file.read_at(&mut header[filled..], filled as u64)? {
            0 => return Ok(None),
            n => filled += n,
        }
    }
    if &header[..16] != SQLITE_MAGIC {
        return Ok(None);
    }
    Ok(Some(u32::from_be_bytes([
        header[24], header[25], header[26], header[27],
    ])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn database(dir: &Path) -> (PathBuf, Connection) {
        let path = dir.join("t.db");
        let conn = crate::store::open_for_writing(&path, Duration::from_secs(1)).unwrap();
        (path, conn)
    }

    fn write(conn: &Connection, n: usize) {
        for _ in 0..n {
            conn.execute(
                "INSERT OR REPLACE INTO heartbeat (id, at) VALUES (1, ?1)",
                [fastrand::u64(..).to_string()],
            )
            .unwrap();
        }
    }

    #[test]
    fn the_file_opened_passes_and_reports_its_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let (path, conn) = database(dir.path());
        let file = DatabaseFile::watch(&path).unwrap();
        write(&conn, 3);
        let sizes = file.check().unwrap();
        assert!(sizes.database >= 4096, "{sizes:?}");
        assert!(sizes.wal > 0, "{sizes:?}");
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        assert_eq!(file.check().unwrap().wal, 0);
        assert_eq!(file.replaced(), None);
    }

    #[test]
    fn a_deleted_database_or_wal_is_caught_and_the_verdict_sticks() {
        let dir = tempfile::tempdir().unwrap();
        let (path, conn) = database(dir.path());
        let file = DatabaseFile::watch(&path).unwrap();
        std::fs::remove_file(wal_path(&path)).unwrap();
        let reason = file.check().unwrap_err();
        assert!(reason.contains("t.db-wal is gone"), "{reason}");
        write(&conn, 1); // SQLite recreates nothing: the connection writes to the unlinked WAL
        assert_eq!(file.check().unwrap_err(), reason);

        let other = tempfile::tempdir().unwrap();
        let (path, _conn) = database(other.path());
        let file = DatabaseFile::watch(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(file.check().unwrap_err().contains("is gone"));
    }

    #[test]
    fn a_file_moved_over_the_path_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let (path, conn) = database(dir.path());
        let file = DatabaseFile::watch(&path).unwrap();
        let copy = dir.path().join("copy.db");
        conn.execute("VACUUM INTO ?1", [copy.to_str().unwrap()])
            .unwrap();
        std::fs::rename(&copy, &path).unwrap();
        let reason = file.check().unwrap_err();
        assert!(reason.contains("names another file"), "{reason}");
    }

    #[test]
    fn an_older_copy_written_over_the_file_in_place_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let (path, conn) = database(dir.path());
        let backup = dir.path().join("backup.db");
        conn.execute("VACUUM INTO ?1", [backup.to_str().unwrap()])
            .unwrap();
        let file = DatabaseFile::watch(&path).unwrap();
        // New pages make page 1 change (its page count), and a checkpoint writes it back.
        conn.execute_batch(
            "CREATE TABLE filler (x BLOB); INSERT INTO filler VALUES (zeroblob(100000));
             PRAGMA wal_checkpoint(TRUNCATE);",
        )
        .unwrap();
        file.check().unwrap();
        // What `cp backup.db orderwatch.db` does: same inode, older contents.
        std::fs::write(&path, std::fs::read(&backup).unwrap()).unwrap();
        let reason = file.check().unwrap_err();
        assert!(reason.contains("overwritten in place"), "{reason}");
        // Our WAL would be replayed onto the copy at the next open: it is renamed aside.
        assert!(!wal_path(&path).exists());
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            names.iter().any(|n| n.starts_with("t.db-wal.replaced-")),
            "{names:?}"
        );
        drop(conn);
        let reopened = Connection::open(&path).unwrap();
        let check: String = reopened
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        let filler: i64 = reopened
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'filler'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(filler, 0, "the copy is as it was");
    }

    #[test]
    fn a_file_truncated_in_place_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _conn) = database(dir.path());
        let file = DatabaseFile::watch(&path).unwrap();
        std::fs::write(&path, b"").unwrap();
        let reason = file.check().unwrap_err();
        assert!(
            reason.contains("no longer starts with a SQLite header"),
            "{reason}"
        );
    }
}
