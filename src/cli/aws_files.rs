//! The student's own AWS CLI files. `identity init` and `identity rotate` (issue 16) get an
//! access key from the class service and call [`write_profile`] to put it into
//! `~/.aws/credentials` (section `[stratus]`) and the class's region into `~/.aws/config`
//! (section `[profile stratus]`), so that `aws --profile stratus` works. Every other profile, and
//! every comment, is kept as it was.
//!
//! This runs in the student's CLI, as the student (the process's effective uid), so it can never
//! write a file they could not write anyway. What it guards against is putting a secret
//! somewhere the student did not mean: `~/.aws` and both files must be real (no symbolic link
//! in them is followed; the home directory itself is taken as it is), of the right type and the
//! caller's own, or nothing is written. Each file is replaced whole, as `core::files` writes (a
//! fresh temporary file beside it, made exclusively and mode 0600 before the first byte, fsync,
//! rename), then the directory is fsynced, so a
//! reader sees the old file or the new one, never half of one, and the new one is 0600 whatever
//! the old one's mode was.
//!
//! `~/.aws` is checked once, then written into by path: replacing it with a link between the
//! check and the rename needs write access to the home directory, which only its owner (the
//! caller) and root have.
//!
//! The files are read as botocore reads them (Python's `configparser.RawConfigParser`, see
//! <https://docs.python.org/3/library/configparser.html> and botocore's `configloader.py`):
//! `[section]` headers, `key = value` or `key: value` lines (keys compared in lower case),
//! whole-line `#` and `;` comments, and lines indented deeper than their key's continuing its
//! value (`s3 =` and its nested settings). [`merge_section`] edits the one section it is given
//! and copies every other byte. Decisions:
//!
//! - **A section twice** is refused, with its line numbers: botocore's parser is strict and
//!   rejects the whole file (`DuplicateSectionError`), so no edit of one copy would make it
//!   readable, and guessing which copy the student meant could hide a key. In the config file,
//!   `[profile stratus]`, `[profile  stratus]` and `[profile "stratus"]` all name the profile
//!   (botocore splits the header as a shell would), so any two of them count as twice.
//! - **A key twice** in the edited section (also rejected by botocore) is set once, where it
//!   first appears; its later copies are dropped, which makes the section readable again.
//! - **Line breaks**: a file whose first line ends in `\r\n` gets `\r\n` on the lines added;
//!   every existing line keeps its own. A last line without a line break keeps none unless a
//!   line is added after it.
//! - **Where keys are added**: after the section's last key (and its indented lines), so
//!   before the blank lines and comments at its end, which usually introduce the next section.
//!
//! After a merge the result is read again and compared with what the merge meant to do; a
//! difference (a layout this module does not expect) is refused rather than written.

use std::collections::HashSet;
use std::fmt;
use std::fs::{File, Metadata, OpenOptions, Permissions};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::core::error::{Error, Kind};
pub(crate) use crate::core::secret::Secret;

/// The mode of the files this writes: the owner's alone.
const FILE_MODE: u32 = 0o600;
/// The mode of `~/.aws` when this creates it.
const DIR_MODE: u32 = 0o700;
/// The largest file this reads to merge into: an AWS CLI file is a few KiB, so more is not one.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// A long-term IAM access key, as the class service hands it over.
#[derive(Debug)]
pub(crate) struct AccessKey {
    /// The access key id (`AKIA…`): not a secret, it names the key in IAM.
    pub(crate) id: String,
    /// The secret access key.
    pub(crate) secret: Secret,
}

/// What [`merge_section`] does with one key of the section. Keys are given in lower case (the
/// file's keys are compared in lower case, as botocore does) and each key at most once. No
/// `Debug`: a value may be a secret.
#[derive(Clone, Copy)]
pub(crate) enum Pair<'a> {
    /// Sets the key to the value: in place where the key is, else added to the section.
    Set(&'a str, &'a str),
    /// Adds the key with the value only if the section lacks the key.
    Default(&'a str, &'a str),
    /// Removes the key (every copy, and its indented lines) from the section.
    Remove(&'a str),
}

impl Pair<'_> {
    fn key(&self) -> &str {
        match self {
            Pair::Set(k, _) | Pair::Default(k, _) | Pair::Remove(k) => k,
        }
    }

    /// The value the section holds once merged, when the merge adds the key.
    fn added_value(&self) -> Option<&str> {
        match self {
            Pair::Set(_, v) | Pair::Default(_, v) => Some(v),
            Pair::Remove(_) => None,
        }
    }
}

/// What a merge did to its section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SectionChange {
    /// The section was not there; it was added at the end.
    Added,
    /// The section was there; some of its keys changed.
    Edited,
    /// The section already said all of this; the text is the same.
    Unchanged,
}

/// A merged file's text and what the merge did. No `Debug`: the text may hold a secret.
pub(crate) struct Merged {
    /// The whole file, merged.
    pub(crate) text: String,
    /// What happened to the section.
    pub(crate) change: SectionChange,
}

/// Why a merge was refused (the file is not named here; [`AwsFilesError`] names it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum MergeError {
    /// The section is there more than once.
    #[error("the section [{section}] is there more than once (lines {})", and_list(.lines))]
    DuplicateSection { section: String, lines: Vec<usize> },
    /// A value would not survive the file format (a line break, a control character, an
    /// empty value, or spaces at either end that the parser would drop).
    #[error("the value of {key} is not one line of printable text")]
    BadValue { key: String },
    /// A key or section name that this module cannot write as is.
    #[error("{name:?} is not a key or section name that can be written")]
    BadName { name: String },
    /// The merged text would not read back as intended.
    #[error("the section [{section}] cannot be merged without changing how other lines read")]
    Layout { section: String },
}

/// Why the AWS files were not written. Each names the path and what is wrong with it; none
/// holds a key's secret.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AwsFilesError {
    #[error("the home directory {path} is not an absolute path")]
    Home { path: PathBuf },
    #[error(
        "{name:?} is not a profile name stratus writes (letters, digits, '-', '_' and '.' only)"
    )]
    Profile { name: String },
    #[error(
        "{path} is a symbolic link; stratus writes AWS credentials only into a real \
         {expected}, never through a link (remove the link and run again)"
    )]
    Symlink {
        path: PathBuf,
        expected: &'static str,
    },
    #[error("{path} is {found}, not a {expected}; stratus writes AWS credentials only there")]
    WrongType {
        path: PathBuf,
        found: &'static str,
        expected: &'static str,
    },
    #[error(
        "{path} belongs to uid {owner}, not to you (uid {uid}); stratus writes AWS credentials \
         only into your own files"
    )]
    Owner { path: PathBuf, owner: u32, uid: u32 },
    #[error("{path} is larger than 1 MiB, which no AWS CLI file is; stratus leaves it alone")]
    TooLarge { path: PathBuf },
    #[error("{path} is not UTF-8 text; stratus leaves it alone")]
    NotText { path: PathBuf },
    #[error(
        "{path} has the section [{section}] more than once (lines {}), which the AWS CLI cannot \
         read either; merge them into one and run again",
        and_list(.lines)
    )]
    DuplicateSection {
        path: PathBuf,
        section: String,
        lines: Vec<usize>,
    },
    #[error("the value of {key} for {path} is not one line of printable text")]
    BadValue { path: PathBuf, key: String },
    #[error("{name:?} cannot be written into {path} as a key or section name")]
    BadName { path: PathBuf, name: String },
    #[error(
        "cannot merge [{section}] into {path} without changing how the AWS CLI reads its other \
         lines; edit the file by hand"
    )]
    Layout { path: PathBuf, section: String },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<AwsFilesError> for Error {
    /// A file that cannot be read or written is a failure; one that is refused (a link, another
    /// owner's, a layout that cannot be merged) is the caller's to fix: exit code 2.
    fn from(e: AwsFilesError) -> Self {
        let kind = match e {
            AwsFilesError::Read { .. }
            | AwsFilesError::CreateDir { .. }
            | AwsFilesError::Write { .. } => Kind::Failed,
            _ => Kind::Refused,
        };
        Error::wrap(kind, e)
    }
}

impl MergeError {
    /// The same refusal, naming the file it is about.
    fn in_file(self, path: &Path) -> AwsFilesError {
        let path = path.to_path_buf();
        match self {
            MergeError::DuplicateSection { section, lines } => AwsFilesError::DuplicateSection {
                path,
                section,
                lines,
            },
            MergeError::BadValue { key } => AwsFilesError::BadValue { path, key },
            MergeError::BadName { name } => AwsFilesError::BadName { path, name },
            MergeError::Layout { section } => AwsFilesError::Layout { path, section },
        }
    }
}

/// What happened to one of the two files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileChange {
    /// The file was not there; it was created with the section.
    Created,
    /// The file was there without the section; the section was added at its end.
    SectionAdded,
    /// The section was there; its keys were updated in place.
    SectionEdited,
    /// The section already said this; the file's text was left as it was.
    Unchanged,
}

/// One file [`write_profile`] wrote (or found up to date). No secret in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileWritten {
    /// The file.
    pub(crate) path: PathBuf,
    /// The section's header, without its brackets (`stratus`, `profile stratus`).
    pub(crate) section: String,
    /// What happened to it.
    pub(crate) change: FileChange,
    /// The file's mode before, when it was not 0600 (it is 0600 now).
    pub(crate) old_mode: Option<u32>,
}

/// What [`write_profile`] did, to tell the student. `Display` gives one line per thing done;
/// no secret is in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Written {
    /// `~/.aws`, when this call created it.
    pub(crate) created_dir: Option<PathBuf>,
    /// `~/.aws/credentials`.
    pub(crate) credentials: FileWritten,
    /// `~/.aws/config`.
    pub(crate) config: FileWritten,
}

impl fmt::Display for FileWritten {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (path, section) = (self.path.display(), &self.section);
        match self.change {
            FileChange::Created => write!(f, "created {path} with [{section}]")?,
            FileChange::SectionAdded => write!(f, "added [{section}] to {path}")?,
            FileChange::SectionEdited => write!(f, "updated [{section}] in {path}")?,
            FileChange::Unchanged => write!(f, "[{section}] in {path} was already up to date")?,
        }
        match self.old_mode {
            Some(mode) => write!(f, " (its mode was {mode:04o}, it is {FILE_MODE:04o} now)"),
            None => Ok(()),
        }
    }
}

impl fmt::Display for Written {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(dir) = &self.created_dir {
            writeln!(f, "created {} (mode {DIR_MODE:04o})", dir.display())?;
        }
        writeln!(f, "{}", self.credentials)?;
        write!(f, "{}", self.config)
    }
}

/// Writes `key` into `home/.aws/credentials` under `[profile]` and `region` into
/// `home/.aws/config` under `[profile <profile>]` (with `output = json` unless the section
/// already sets an output), as the process's effective uid, merged with what the files hold.
///
/// Both files are checked, read and merged before either is written, so a file that is refused
/// leaves both as they were. If writing the second (config) fails, the first is already
/// written; the error names the file that failed. A leftover `aws_session_token` in the
/// credentials section is removed: it would be sent with the new long-term key and make every
/// call fail.
pub(crate) fn write_profile(
    home: &Path,
    profile: &str,
    key: &AccessKey,
    region: &str,
) -> Result<Written, AwsFilesError> {
    write_profile_as(home, profile, key, region, crate::sys::effective_uid())
}

/// Whether [`write_profile`] would write `profile` into `home`'s AWS files now, without
/// writing anything (not even `~/.aws`). `identity init` calls it before it asks the service for
/// a key, so that a file that would be refused is reported before a key exists.
pub(crate) fn check_profile(home: &Path, profile: &str) -> Result<(), AwsFilesError> {
    let placeholder = AccessKey {
        id: "AKIAIOSFODNN7EXAMPLE".into(),
        secret: Secret::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    };
    prepare(
        home,
        profile,
        &placeholder,
        "us-east-1",
        crate::sys::effective_uid(),
    )
    .map(|_| ())
}

/// The access key id `home/.aws/credentials` holds under `[profile]`, read as `write_profile`
/// reads (never through a link, only the caller's own regular file); `None` when the file or
/// the section or its key is not there. The secret is not read out.
pub(crate) fn key_id(home: &Path, profile: &str) -> Result<Option<String>, AwsFilesError> {
    key_id_as(home, profile, crate::sys::effective_uid())
}

/// [`key_id`] of the files of `uid` (root reading a student's, for `admin identities list`).
pub(crate) fn key_id_as(
    home: &Path,
    profile: &str,
    uid: u32,
) -> Result<Option<String>, AwsFilesError> {
    let dir = home.join(".aws");
    if open_dir(&dir, uid)?.is_none() {
        return Ok(None);
    }
    let Some(current) = read_current(&dir.join("credentials"), uid)? else {
        return Ok(None);
    };
    let lines = parse(&current.text);
    Ok(model(&lines)
        .into_iter()
        .find(|(h, _)| names(h, profile))
        .and_then(|(_, keys)| {
            keys.into_iter()
                .find(|(k, _)| k == "aws_access_key_id")
                .map(|(_, v)| v)
        })
        .filter(|v| !v.is_empty()))
}

/// [`write_profile`] for the files of `uid`.
fn write_profile_as(
    home: &Path,
    profile: &str,
    key: &AccessKey,
    region: &str,
    uid: u32,
) -> Result<Written, AwsFilesError> {
    let plan = prepare(home, profile, key, region, uid)?;
    let (dir, created_dir) = match plan.dir {
        Some(dir) => (dir, None),
        None => (
            create_dir(&plan.paths.dir, uid)?,
            Some(plan.paths.dir.clone()),
        ),
    };
    let credentials = commit(&dir, plan.credentials)?;
    let config = commit(&dir, plan.config)?;
    Ok(Written {
        created_dir,
        credentials,
        config,
    })
}

/// Where the two files are.
struct AwsPaths {
    dir: PathBuf,
    credentials: PathBuf,
    config: PathBuf,
}

/// Everything checked, read and merged; nothing written yet.
struct Plan {
    paths: AwsPaths,
    /// `~/.aws`, opened, when it exists.
    dir: Option<File>,
    credentials: FilePlan,
    config: FilePlan,
}

/// One file's merge, to be written.
struct FilePlan {
    path: PathBuf,
    section: String,
    /// The file's mode, when it exists.
    old_mode: Option<u32>,
    merged: Merged,
}

/// A file as it is now.
struct Current {
    text: String,
    mode: u32,
}

/// Checks `home/.aws` and both files, reads them, and merges the profile into each.
fn prepare(
    home: &Path,
    profile: &str,
    key: &AccessKey,
    region: &str,
    uid: u32,
) -> Result<Plan, AwsFilesError> {
    if !home.is_absolute() {
        return Err(AwsFilesError::Home {
            path: home.to_path_buf(),
        });
    }
    let name_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if profile.is_empty() || !profile.chars().all(name_ok) {
        return Err(AwsFilesError::Profile {
            name: profile.to_string(),
        });
    }
    let aws = home.join(".aws");
    let paths = AwsPaths {
        credentials: aws.join("credentials"),
        config: aws.join("config"),
        dir: aws,
    };
    let dir = open_dir(&paths.dir, uid)?;
    // Nothing can be in a directory that is not there.
    let read = |path: &Path| match dir {
        Some(_) => read_current(path, uid),
        None => Ok(None),
    };
    let credentials = plan_file(
        &paths.credentials,
        read(&paths.credentials)?,
        profile,
        &[
            Pair::Set("aws_access_key_id", &key.id),
            Pair::Set("aws_secret_access_key", key.secret.expose()),
            Pair::Remove("aws_session_token"),
        ],
    )?;
    // botocore reads the default profile's settings from `[default]` in the config file, every
    // other profile's from `[profile name]`.
    let config_section = match profile {
        "default" => "default".to_string(),
        _ => format!("profile {profile}"),
    };
    let config = plan_file(
        &paths.config,
        read(&paths.config)?,
        &config_section,
        &[Pair::Set("region", region), Pair::Default("output", "json")],
    )?;
    Ok(Plan {
        paths,
        dir,
        credentials,
        config,
    })
}

/// Merges `pairs` into `section` of the file at `path` as it is now (`None`: not there).
fn plan_file(
    path: &Path,
    current: Option<Current>,
    section: &str,
    pairs: &[Pair<'_>],
) -> Result<FilePlan, AwsFilesError> {
    let text = current.as_ref().map_or("", |c| c.text.as_str());
    let merged = merge_section(text, section, pairs).map_err(|e| e.in_file(path))?;
    Ok(FilePlan {
        path: path.to_path_buf(),
        section: section.to_string(),
        old_mode: current.map(|c| c.mode),
        merged,
    })
}

/// Writes one planned file into `dir` (unless it is already as planned, mode included).
fn commit(dir: &File, plan: FilePlan) -> Result<FileWritten, AwsFilesError> {
    let change = match (plan.old_mode, plan.merged.change) {
        (None, _) => FileChange::Created,
        (Some(_), SectionChange::Added) => FileChange::SectionAdded,
        (Some(_), SectionChange::Edited) => FileChange::SectionEdited,
        (Some(_), SectionChange::Unchanged) => FileChange::Unchanged,
    };
    let old_mode = plan.old_mode.filter(|m| *m != FILE_MODE);
    if change != FileChange::Unchanged || old_mode.is_some() {
        replace_file(dir, &plan.path, plan.merged.text.as_bytes())?;
    }
    Ok(FileWritten {
        path: plan.path,
        section: plan.section,
        change,
        old_mode,
    })
}

/// What kind of thing a file is, for messages (`a directory`, `a socket`).
fn kind_of(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_fifo() {
        "a named pipe"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// Refuses `meta` unless it is a real `expected` ("directory" or "regular file") owned by
/// `uid`.
fn check_meta(
    path: &Path,
    meta: &Metadata,
    expected: &'static str,
    uid: u32,
) -> Result<(), AwsFilesError> {
    let path = path.to_path_buf();
    let t = meta.file_type();
    if t.is_symlink() {
        return Err(AwsFilesError::Symlink { path, expected });
    }
    let right = match expected {
        "directory" => t.is_dir(),
        _ => t.is_file(),
    };
    if !right {
        return Err(AwsFilesError::WrongType {
            path,
            found: kind_of(meta),
            expected,
        });
    }
    if meta.uid() != uid {
        return Err(AwsFilesError::Owner {
            path,
            owner: meta.uid(),
            uid,
        });
    }
    Ok(())
}

/// An error opening `path` with `O_NOFOLLOW`: `ELOOP` means a link was put there since it was
/// looked at.
fn open_error(path: &Path, expected: &'static str, source: std::io::Error) -> AwsFilesError {
    match source.raw_os_error() {
        Some(libc::ELOOP) => AwsFilesError::Symlink {
            path: path.to_path_buf(),
            expected,
        },
        _ => AwsFilesError::Read {
            path: path.to_path_buf(),
            source,
        },
    }
}

/// Opens `~/.aws` (never through a link) after checking it, or `None` when it is not there.
fn open_dir(path: &Path, uid: u32) -> Result<Option<File>, AwsFilesError> {
    const EXPECTED: &str = "directory";
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(AwsFilesError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
        Ok(meta) => check_meta(path, &meta, EXPECTED, uid)?,
    }
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| open_error(path, EXPECTED, e))?;
    // What was opened is what counts: check it again.
    let meta = dir.metadata().map_err(|e| open_error(path, EXPECTED, e))?;
    check_meta(path, &meta, EXPECTED, uid)?;
    Ok(Some(dir))
}

/// Creates `~/.aws` with mode 0700 (whatever the umask) and opens it.
fn create_dir(path: &Path, uid: u32) -> Result<File, AwsFilesError> {
    let failed = |source| AwsFilesError::CreateDir {
        path: path.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .mode(DIR_MODE)
        .create(path)
        .map_err(failed)?;
    let dir = open_dir(path, uid)?.ok_or_else(|| failed(std::io::ErrorKind::NotFound.into()))?;
    // The umask may have taken bits off (0500 would keep even the owner out); fchmod.
    dir.set_permissions(Permissions::from_mode(DIR_MODE))
        .map_err(failed)?;
    Ok(dir)
}

/// Reads one of the files, after checking it (never through a link, and without opening
/// anything that is not a regular file), or `None` when it is not there.
fn read_current(path: &Path, uid: u32) -> Result<Option<Current>, AwsFilesError> {
    const EXPECTED: &str = "regular file";
    let read_error = |source| AwsFilesError::Read {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_error(e)),
        Ok(meta) => check_meta(path, &meta, EXPECTED, uid)?,
    }
    // O_NONBLOCK: a named pipe put there since the check is not waited on.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| open_error(path, EXPECTED, e))?;
    let meta = file.metadata().map_err(read_error)?;
    check_meta(path, &meta, EXPECTED, uid)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(AwsFilesError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    let text = String::from_utf8(bytes).map_err(|_| AwsFilesError::NotText {
        path: path.to_path_buf(),
    })?;
    Ok(Some(Current {
        text,
        mode: meta.mode() & 0o7777,
    }))
}

/// Replaces `path` (in `dir`) with `data`, mode 0600, as `core::files::write_private` writes
/// (a temporary file beside it, created exclusively, so never through a link, mode set before
/// the first byte, fsync, rename over `path`, which replaces a link put there rather than
/// following it), then fsyncs the directory, so the rename outlives a crash.
fn replace_file(dir: &File, path: &Path, data: &[u8]) -> Result<(), AwsFilesError> {
    let failed = |source| AwsFilesError::Write {
        path: path.to_path_buf(),
        source,
    };
    crate::core::files::write_private(path, data).map_err(failed)?;
    dir.sync_all().map_err(failed)
}

// ---------------------------------------------------------------------------------------------
// The INI format, as botocore reads it.

/// What botocore's `configparser` makes of one line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LineKind<'a> {
    /// Empty, or spaces only.
    Blank,
    /// A whole-line comment (`#` or `;` after any indentation).
    Comment,
    /// `[name]`: the name is what is between the `[` and the last `]`, spaces kept.
    Header(&'a str),
    /// `key = value` or `key: value`; the key in lower case.
    Key(String),
    /// A line indented deeper than the key above it: more of that key's value.
    Continuation,
    /// Anything else (text before the first header, a line without `=` or `:`): botocore
    /// refuses the file, but that is not this module's business; it is kept as it is.
    Other,
}

/// One line of a file.
struct Line<'a> {
    /// The line as it is in the file, its line break included.
    raw: &'a str,
    /// The line without its line break (`\n` or `\r\n`).
    body: &'a str,
    /// How many whitespace characters it starts with.
    indent: usize,
    kind: LineKind<'a>,
}

/// `configparser`'s state between lines (`RawConfigParser._read`, with its defaults:
/// `empty_lines_in_values=True`, no inline comments).
#[derive(Default)]
struct Reader {
    /// A section header has been read.
    in_section: bool,
    /// A key has been read since the last header: deeper lines continue it.
    in_key: bool,
    /// The indentation of the last line that was not a continuation, blank or comment.
    indent_level: usize,
}

impl Reader {
    /// Reads one line (as `split_inclusive('\n')` gives it).
    fn read<'a>(&mut self, raw: &'a str) -> Line<'a> {
        let body = match raw.strip_suffix('\n') {
            Some(b) => b.strip_suffix('\r').unwrap_or(b),
            None => raw,
        };
        let stripped = body.trim();
        let indent = body.chars().take_while(|c| c.is_whitespace()).count();
        let kind = if stripped.starts_with('#') || stripped.starts_with(';') {
            LineKind::Comment
        } else if stripped.is_empty() {
            LineKind::Blank
        } else if self.in_key && indent > self.indent_level {
            LineKind::Continuation
        } else {
            self.indent_level = indent;
            if let Some(name) = header_name(stripped) {
                self.in_section = true;
                self.in_key = false;
                LineKind::Header(name)
            } else if !self.in_section {
                LineKind::Other
            } else if let Some((key, _)) = split_key(stripped) {
                self.in_key = true;
                LineKind::Key(key.trim_end().to_lowercase())
            } else {
                LineKind::Other
            }
        };
        Line {
            raw,
            body,
            indent,
            kind,
        }
    }
}

/// The lines of `text`, read as botocore reads them.
fn parse(text: &str) -> Vec<Line<'_>> {
    let mut reader = Reader::default();
    text.split_inclusive('\n')
        .map(|raw| reader.read(raw))
        .collect()
}

/// The name in a header line (`configparser`'s `\[(?P<header>.+)\]`, matched greedily).
fn header_name(stripped: &str) -> Option<&str> {
    let rest = stripped.strip_prefix('[')?;
    let name = &rest[..rest.rfind(']')?];
    (!name.is_empty()).then_some(name)
}

/// A key line split at its first `=` or `:`: the text before (untrimmed) and after it.
fn split_key(s: &str) -> Option<(&str, &str)> {
    let at = s.find(['=', ':'])?;
    Some((&s[..at], &s[at + 1..]))
}

/// Whether a header names `section`. In the config file botocore takes any header that starts
/// with `profile` and splits, as a shell would, into `profile` and a name, so `[profile  x]`
/// and `[profile "x"]` name `profile x` too; otherwise only the same text does (`[ x ]` is not
/// `[x]`, and case counts).
fn names(header: &str, section: &str) -> bool {
    header == section || profile_of(header).is_some_and(|p| profile_of(section) == Some(p))
}

/// The profile a `profile <name>` header names (a quoted name unquoted).
fn profile_of(header: &str) -> Option<&str> {
    let rest = header.strip_prefix("profile")?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let name = rest.trim();
    let unquoted = ['"', '\'']
        .iter()
        .find_map(|q| name.strip_prefix(*q)?.strip_suffix(*q));
    match unquoted {
        Some(inner) if !inner.is_empty() => Some(inner),
        Some(_) => None,
        None if name.is_empty() || name.contains(char::is_whitespace) => None,
        None => Some(name),
    }
}

/// The line break to use for added lines: the file's first one, `\n` if it has none.
fn line_break(text: &str) -> &'static str {
    match text.find('\n') {
        Some(at) if text[..at].ends_with('\r') => "\r\n",
        _ => "\n",
    }
}

/// Merges `pairs` into the section `section` (its header without brackets, `profile stratus`)
/// of an AWS CLI file's `text`: set in place where they are, added after the section's last key
/// where they are not, or the whole section added at the end (after one blank line) when the
/// file lacks it. Every byte outside the section is kept, and inside it every line but those of
/// the keys set or removed. See the module's documentation for duplicates and line breaks.
pub(crate) fn merge_section(
    text: &str,
    section: &str,
    pairs: &[Pair<'_>],
) -> Result<Merged, MergeError> {
    check_name(section, false)?;
    for pair in pairs {
        check_name(pair.key(), true)?;
        if let Some(value) = pair.added_value() {
            check_value(pair.key(), value)?;
        }
    }
    let lines = parse(text);
    let headers: Vec<usize> = (0..lines.len())
        .filter(|&i| matches!(lines[i].kind, LineKind::Header(h) if names(h, section)))
        .collect();
    let (merged, change) = match headers[..] {
        [] => (
            append_section(text, &lines, section, pairs),
            SectionChange::Added,
        ),
        [at] => {
            let merged = edit_section(text, &lines, at, pairs);
            let change = match merged == text {
                true => SectionChange::Unchanged,
                false => SectionChange::Edited,
            };
            (merged, change)
        }
        _ => {
            return Err(MergeError::DuplicateSection {
                section: section.to_string(),
                lines: headers.iter().map(|i| i + 1).collect(),
            });
        }
    };
    // Read the result back: it must say what was meant, and every other section the same.
    if model(&parse(&merged)) != intended(model(&lines), section, pairs) {
        return Err(MergeError::Layout {
            section: section.to_string(),
        });
    }
    Ok(Merged {
        text: merged,
        change,
    })
}

/// Refuses a key or section name that would not read back as itself.
fn check_name(name: &str, is_key: bool) -> Result<(), MergeError> {
    let bad_char = |c: char| c.is_control() || matches!(c, '[' | ']' | '=' | ':');
    let ok = !name.is_empty()
        && name.trim() == name
        && !name.contains(bad_char)
        && !(is_key && (name.contains(char::is_whitespace) || name.to_lowercase() != name));
    match ok {
        true => Ok(()),
        false => Err(MergeError::BadName {
            name: name.to_string(),
        }),
    }
}

/// Refuses a value that would not read back as itself.
fn check_value(key: &str, value: &str) -> Result<(), MergeError> {
    match !value.is_empty() && value.trim() == value && !value.contains(char::is_control) {
        true => Ok(()),
        false => Err(MergeError::BadValue {
            key: key.to_string(),
        }),
    }
}

/// `text` with the section added at its end, one blank line after what is there.
fn append_section(text: &str, lines: &[Line<'_>], section: &str, pairs: &[Pair<'_>]) -> String {
    let eol = line_break(text);
    let mut out = text.to_string();
    if !text.is_empty() {
        if !text.ends_with('\n') {
            out.push_str(eol);
        }
        if lines.last().is_some_and(|l| !l.body.trim().is_empty()) {
            out.push_str(eol);
        }
    }
    out.push_str(&format!("[{section}]{eol}"));
    for pair in pairs {
        if let Some(value) = pair.added_value() {
            out.push_str(&format!("{} = {value}{eol}", pair.key()));
        }
    }
    out
}

/// `text` with the section whose header is line `at` merged.
fn edit_section(text: &str, lines: &[Line<'_>], at: usize, pairs: &[Pair<'_>]) -> String {
    let end = (at + 1..lines.len())
        .find(|&i| matches!(lines[i].kind, LineKind::Header(_)))
        .unwrap_or(lines.len());
    let body = &lines[at + 1..end];
    let present: HashSet<&str> = body
        .iter()
        .filter_map(|l| match &l.kind {
            LineKind::Key(k) => Some(k.as_str()),
            _ => None,
        })
        .collect();
    // The section's lines as they will be, each with whether keys may be added after it.
    let mut kept: Vec<(String, bool)> = Vec::with_capacity(body.len());
    let mut set: HashSet<&str> = HashSet::new();
    // The lines continuing a key that was replaced or removed go with it.
    let mut dropping = false;
    for line in body {
        match &line.kind {
            LineKind::Continuation if dropping => {}
            LineKind::Key(key) => {
                let pair = pairs.iter().find(|p| p.key() == key);
                dropping = matches!(pair, Some(Pair::Set(..) | Pair::Remove(_)));
                match pair {
                    Some(Pair::Set(k, value)) if set.insert(k) => {
                        kept.push((with_value(line, value), true));
                    }
                    // A later copy of a key set above, or a key removed.
                    Some(Pair::Set(..) | Pair::Remove(_)) => {}
                    Some(Pair::Default(..)) | None => kept.push((line.raw.to_string(), true)),
                }
            }
            LineKind::Blank | LineKind::Comment => kept.push((line.raw.to_string(), false)),
            _ => kept.push((line.raw.to_string(), true)),
        }
    }
    let missing: Vec<(&str, &str)> = pairs
        .iter()
        .filter(|p| !present.contains(p.key()))
        .filter_map(|p| Some((p.key(), p.added_value()?)))
        .collect();
    let split = kept
        .iter()
        .rposition(|(_, content)| *content)
        .map_or(0, |i| i + 1);
    let mut out: String = lines[..=at].iter().map(|l| l.raw).collect();
    for (raw, _) in &kept[..split] {
        out.push_str(raw);
    }
    if !missing.is_empty() {
        let eol = line_break(text);
        if !out.ends_with('\n') {
            out.push_str(eol);
        }
        let indent = " ".repeat(added_indent(&out, lines.get(end)));
        for (key, value) in missing {
            out.push_str(&format!("{indent}{key} = {value}{eol}"));
        }
    }
    for (raw, _) in &kept[split..] {
        out.push_str(raw);
    }
    for line in &lines[end..] {
        out.push_str(line.raw);
    }
    out
}

/// How deep to indent a key added after `before` so that it is read as a key (not as more of
/// the key above) and the header that follows (`next`) is still read as a header.
fn added_indent(before: &str, next: Option<&Line<'_>>) -> usize {
    let mut reader = Reader::default();
    for raw in before.split_inclusive('\n') {
        reader.read(raw);
    }
    match reader.in_key {
        // No deeper than the key above; the next header is no deeper than that either.
        true => reader.indent_level,
        // Only the header above: no deeper than the next header, or the next header would
        // continue the added key.
        false => next.map_or(0, |l| l.indent),
    }
}

/// The key line `line` with its value replaced, spacing and line break kept.
fn with_value(line: &Line<'_>, value: &str) -> String {
    let eol = &line.raw[line.body.len()..];
    let Some((before, after)) = split_key(line.body) else {
        return line.raw.to_string();
    };
    let old = after.trim();
    let gap = if !old.is_empty() {
        &after[..after.len() - after.trim_start().len()]
    } else if before.ends_with(char::is_whitespace) {
        " "
    } else {
        ""
    };
    let delimiter = &line.body[before.len()..=before.len()];
    format!("{before}{delimiter}{gap}{value}{eol}")
}

/// The sections of a file and their keys in order, values with their continuation lines
/// joined by `\n`: what botocore would see, for checking a merge (blank lines inside a value
/// are left out, which changes no comparison this is used for).
type Model = Vec<(String, Vec<(String, String)>)>;

/// The model of parsed lines.
fn model(lines: &[Line<'_>]) -> Model {
    let mut out: Model = Vec::new();
    for line in lines {
        match &line.kind {
            LineKind::Header(name) => out.push((name.to_string(), Vec::new())),
            LineKind::Key(key) => {
                let value = split_key(line.body).map_or("", |(_, v)| v.trim());
                if let Some((_, keys)) = out.last_mut() {
                    keys.push((key.clone(), value.to_string()));
                }
            }
            LineKind::Continuation => {
                if let Some((_, value)) = out.last_mut().and_then(|(_, keys)| keys.last_mut()) {
                    value.push('\n');
                    value.push_str(line.body.trim());
                }
            }
            LineKind::Blank | LineKind::Comment | LineKind::Other => {}
        }
    }
    out
}

/// The model a merge of `pairs` into `section` should give.
fn intended(mut sections: Model, section: &str, pairs: &[Pair<'_>]) -> Model {
    let Some((_, keys)) = sections.iter_mut().find(|(h, _)| names(h, section)) else {
        let keys = pairs
            .iter()
            .filter_map(|p| Some((p.key().to_string(), p.added_value()?.to_string())))
            .collect();
        sections.push((section.to_string(), keys));
        return sections;
    };
    for pair in pairs {
        let key = pair.key();
        let at = keys.iter().position(|(k, _)| k == key);
        match (pair, at) {
            (Pair::Set(_, value), Some(at)) => {
                keys[at].1 = value.to_string();
                let mut first = true;
                keys.retain(|(k, _)| k != key || std::mem::replace(&mut first, false));
            }
            (Pair::Set(_, value) | Pair::Default(_, value), None) => {
                keys.push((key.to_string(), value.to_string()));
            }
            (Pair::Default(..), Some(_)) => {}
            (Pair::Remove(_), _) => keys.retain(|(k, _)| k != key),
        }
    }
    sections
}

/// `3`, `3 and 9`, `3, 9 and 12`.
fn and_list(items: &[usize]) -> String {
    let words: Vec<String> = items.iter().map(ToString::to_string).collect();
    match words.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => words.concat(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::error::render;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLE1";
    const NEW_SECRET: &str = "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLE2";

    fn key(id: &str, secret: &str) -> AccessKey {
        AccessKey {
            id: id.into(),
            secret: Secret::new(secret),
        }
    }

    fn creds<'a>(id: &'a str, secret: &'a str) -> [Pair<'a>; 3] {
        [
            Pair::Set("aws_access_key_id", id),
            Pair::Set("aws_secret_access_key", secret),
            Pair::Remove("aws_session_token"),
        ]
    }

    fn config(region: &str) -> [Pair<'_>; 2] {
        [Pair::Set("region", region), Pair::Default("output", "json")]
    }

    /// The merged text of the credentials pairs (id `AKIANEW`, secret `S`) into `[stratus]`.
    fn merged(text: &str) -> String {
        merge_section(text, "stratus", &creds("AKIANEW", "S"))
            .map(|m| m.text)
            .unwrap()
    }

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    fn uid() -> u32 {
        crate::sys::effective_uid()
    }

    /// The home's `.aws` paths.
    fn aws(home: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let dir = home.join(".aws");
        (dir.clone(), dir.join("credentials"), dir.join("config"))
    }

    /// An error's text, its causes, and its Debug, none of which may hold a secret.
    fn all_text(e: AwsFilesError) -> String {
        let debug = format!("{e:?}");
        format!("{}\n{debug}", render(&Error::from(e)))
    }

    #[test]
    fn into_an_empty_file_the_section_is_all_there_is() {
        let m = merge_section("", "stratus", &creds("AKIANEW", "S")).unwrap();
        assert_eq!(m.change, SectionChange::Added);
        assert_eq!(
            m.text,
            "[stratus]\naws_access_key_id = AKIANEW\naws_secret_access_key = S\n"
        );
        let m = merge_section("", "profile stratus", &config("us-east-2")).unwrap();
        assert_eq!(
            m.text,
            "[profile stratus]\nregion = us-east-2\noutput = json\n"
        );
    }

    #[test]
    fn a_new_section_goes_at_the_end_after_one_blank_line_and_every_byte_before_is_kept() {
        let text = "# my accounts\n[default]\naws_access_key_id = AKIADEFAULT\n; old one\n\
                    aws_secret_access_key=xyz\n[work]\nregion: eu-west-1\ns3 =\n  a = 1\n";
        let section = "[stratus]\naws_access_key_id = AKIANEW\naws_secret_access_key = S\n";
        assert_eq!(merged(text), format!("{text}\n{section}"));
        // A blank line already there is the one blank line.
        let text = "[default]\nregion = x\n\n";
        assert_eq!(merged(text), format!("{text}{section}"));
        // Other spellings are other sections, as botocore reads the credentials file.
        let text = "[ stratus ]\na = 1\n[Stratus]\nb = 2\n[profile stratus]\nc = 3\n";
        assert_eq!(merged(text), format!("{text}\n{section}"));
    }

    #[test]
    fn an_existing_section_is_edited_in_place_and_every_byte_outside_it_is_kept() {
        let before = "# top\n[default]\naws_access_key_id = AKIADEFAULT\n\n";
        let section = "[stratus]\n# rotated by stratus\nAWS_Access_Key_ID=AKIAOLD\ncli_pager =\n\
                       aws_secret_access_key   :   old/secret\naws_session_token = tok\n  more\n\
                       \n# the work account\n";
        let after = "[work]\naws_access_key_id = AKIAWORK\n";
        let text = format!("{before}{section}{after}");
        let m = merge_section(&text, "stratus", &creds("AKIANEW", "new/secret")).unwrap();
        assert_eq!(m.change, SectionChange::Edited);
        assert!(m.text.starts_with(before), "{}", m.text);
        assert!(m.text.ends_with(after), "{}", m.text);
        assert_eq!(
            &m.text[before.len()..m.text.len() - after.len()],
            "[stratus]\n# rotated by stratus\nAWS_Access_Key_ID=AKIANEW\ncli_pager =\n\
             aws_secret_access_key   :   new/secret\n\n# the work account\n",
            "keys replaced where they were, spacing kept, the stale token gone"
        );
        // Merging again changes nothing.
        let again = merge_section(&m.text, "stratus", &creds("AKIANEW", "new/secret")).unwrap();
        assert_eq!(again.change, SectionChange::Unchanged);
        assert_eq!(again.text, m.text);
    }

    #[test]
    fn missing_keys_go_after_the_last_key_and_a_default_does_not_replace() {
        let text = "[profile stratus]\noutput = text\n\n# next\n[profile other]\nregion = x\n";
        let m = merge_section(text, "profile stratus", &config("us-east-2")).unwrap();
        assert_eq!(
            m.text,
            "[profile stratus]\noutput = text\nregion = us-east-2\n\n# next\n[profile other]\n\
             region = x\n"
        );
        // An empty value is replaced with the spacing the key line already has.
        let m = merge_section(
            "[profile stratus]\nregion =\n",
            "profile stratus",
            &config("r"),
        );
        assert_eq!(
            m.unwrap().text,
            "[profile stratus]\nregion = r\noutput = json\n"
        );
        // A header with nothing under it.
        assert_eq!(
            merged("[stratus]\n\n[next]\n"),
            "[stratus]\naws_access_key_id = AKIANEW\naws_secret_access_key = S\n\n[next]\n"
        );
    }

    #[test]
    fn nested_values_are_kept_and_a_nested_key_is_not_the_section_s_own() {
        let text = "[profile stratus]\ns3 =\n  max_concurrent_requests = 10\n  region = eu-west-1\n\
                    \n  addressing_style = path\noutput = json\n";
        let m = merge_section(text, "profile stratus", &config("us-east-2")).unwrap();
        assert_eq!(m.text, format!("{text}region = us-east-2\n"));
        // At the end of the section, an added key goes after the nested lines, not among them.
        let text = "[profile stratus]\nregion = old\ns3 =\n    addressing_style = path\n\n\
                    [default]\n";
        let m = merge_section(text, "profile stratus", &config("us-east-2")).unwrap();
        assert_eq!(
            m.text,
            "[profile stratus]\nregion = us-east-2\ns3 =\n    addressing_style = path\n\
             output = json\n\n[default]\n"
        );
    }

    #[test]
    fn crlf_files_get_crlf_lines_and_a_missing_last_line_break_is_handled() {
        assert_eq!(
            merged("[default]\r\nregion = x\r\n"),
            "[default]\r\nregion = x\r\n\r\n[stratus]\r\naws_access_key_id = AKIANEW\r\n\
             aws_secret_access_key = S\r\n"
        );
        assert_eq!(
            merged("[stratus]\r\naws_access_key_id = OLD\r\n"),
            "[stratus]\r\naws_access_key_id = AKIANEW\r\naws_secret_access_key = S\r\n"
        );
        assert_eq!(
            merged("[default]\nregion = x"),
            "[default]\nregion = x\n\n[stratus]\naws_access_key_id = AKIANEW\n\
             aws_secret_access_key = S\n"
        );
        // Nothing added after the last line: it keeps having no line break.
        assert_eq!(
            merged("[stratus]\naws_secret_access_key = old\naws_access_key_id = OLD"),
            "[stratus]\naws_secret_access_key = S\naws_access_key_id = AKIANEW"
        );
        assert_eq!(
            merged("[stratus]\naws_access_key_id = OLD"),
            "[stratus]\naws_access_key_id = AKIANEW\naws_secret_access_key = S\n"
        );
    }

    #[test]
    fn a_section_twice_is_refused_with_its_lines_and_a_key_twice_is_set_once() {
        let e = merge_section("[stratus]\na = 1\n[default]\n[stratus]\n", "stratus", &[]);
        let e = e.err().unwrap();
        assert_eq!(
            e,
            MergeError::DuplicateSection {
                section: "stratus".into(),
                lines: vec![1, 4],
            }
        );
        assert_eq!(
            e.to_string(),
            "the section [stratus] is there more than once (lines 1 and 4)"
        );
        // botocore splits a config header as a shell would: these all name profile stratus.
        let text =
            "[profile stratus]\n[profile  \"stratus\"]\n[profilestratus]\n[profile\tstratus]\n";
        let e = merge_section(text, "profile stratus", &config("r"))
            .err()
            .unwrap();
        assert!(matches!(e, MergeError::DuplicateSection { ref lines, .. } if *lines == [1, 2, 4]));
        assert!(e.to_string().contains("(lines 1, 2 and 4)"), "{e}");
        // The same key twice in the section: the first is set, the later ones dropped.
        assert_eq!(
            merged(
                "[stratus]\naws_access_key_id = A1\nother = x\naws_access_key_id = A2\n  cont\n"
            ),
            "[stratus]\naws_access_key_id = AKIANEW\nother = x\naws_secret_access_key = S\n"
        );
    }

    #[test]
    fn an_indented_header_stays_a_header_after_keys_are_added() {
        // Under a bare header, an added key as deep as the next header, or it would take that
        // header for more of its value.
        let text = "[stratus]\n    [other]\nx = 1\n";
        let m = merged(text);
        assert_eq!(
            m,
            "[stratus]\n    aws_access_key_id = AKIANEW\n    aws_secret_access_key = S\n    \
             [other]\nx = 1\n"
        );
        let sections: Vec<String> = model(&parse(&m)).into_iter().map(|(h, _)| h).collect();
        assert_eq!(sections, ["stratus", "other"]);
        // After an indented key, as deep as that key.
        assert_eq!(
            merged("[stratus]\n  aws_access_key_id = OLD\n  [other]\n"),
            "[stratus]\n  aws_access_key_id = AKIANEW\n  aws_secret_access_key = S\n  [other]\n"
        );
    }

    #[test]
    fn values_and_names_that_would_not_read_back_are_refused_without_the_value() {
        for bad in ["abc\ndef", " abc", "abc ", "", "ab\rc"] {
            let e = merge_section("", "stratus", &creds("AKIANEW", bad))
                .err()
                .unwrap();
            assert_eq!(
                e,
                MergeError::BadValue {
                    key: "aws_secret_access_key".into()
                }
            );
            if !bad.is_empty() {
                assert!(!e.to_string().contains(bad.trim()), "{e}");
            }
        }
        for (section, key) in [("stratus", "Region"), ("stratus", "a b"), ("a]b", "k")] {
            let e = merge_section("", section, &[Pair::Set(key, "v")]).err();
            assert!(
                matches!(e, Some(MergeError::BadName { .. })),
                "{section} {key}"
            );
        }
    }

    #[test]
    fn a_secret_never_prints() {
        let k = key("AKIANEW", SECRET);
        let debug = format!("{k:?}");
        assert!(
            debug.contains("<redacted>") && debug.contains("AKIANEW"),
            "{debug}"
        );
        assert!(!debug.contains(SECRET), "{debug}");
        assert_eq!(format!("{:?}", k.secret), "<redacted>");
    }

    #[test]
    fn a_first_write_creates_a_private_dir_and_private_files() {
        let home = tempfile::tempdir().unwrap();
        let (dir, credentials, config) = aws(home.path());
        let w = write_profile(home.path(), "stratus", &key("AKIANEW", SECRET), "us-east-2");
        let w = w.unwrap();
        assert_eq!(w.created_dir.as_deref(), Some(dir.as_path()));
        assert_eq!(w.credentials.change, FileChange::Created);
        assert_eq!(w.config.change, FileChange::Created);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&credentials), 0o600);
        assert_eq!(mode(&config), 0o600);
        assert_eq!(
            std::fs::read_to_string(&credentials).unwrap(),
            format!("[stratus]\naws_access_key_id = AKIANEW\naws_secret_access_key = {SECRET}\n")
        );
        assert_eq!(
            std::fs::read_to_string(&config).unwrap(),
            "[profile stratus]\nregion = us-east-2\noutput = json\n"
        );
        let said = w.to_string();
        assert_eq!(
            said,
            format!(
                "created {} (mode 0700)\ncreated {} with [stratus]\ncreated {} with [profile \
                 stratus]",
                dir.display(),
                credentials.display(),
                config.display()
            )
        );
        assert!(!format!("{said}{w:?}").contains(SECRET));
        // No temporary file is left beside them.
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["config", "credentials"]);
    }

    #[test]
    fn a_symlinked_credentials_file_is_refused_and_its_target_left_alone() {
        let home = tempfile::tempdir().unwrap();
        let (dir, credentials, config) = aws(home.path());
        std::fs::create_dir(&dir).unwrap();
        let victim = home.path().join("someone-elses-file");
        std::fs::write(&victim, "[theirs]\nkey = value\n").unwrap();
        std::os::unix::fs::symlink(&victim, &credentials).unwrap();
        let e = write_profile(home.path(), "stratus", &key("AKIANEW", SECRET), "us-east-2");
        let e = e.err().unwrap();
        assert!(matches!(e, AwsFilesError::Symlink { ref path, .. } if *path == credentials));
        let text = all_text(e);
        assert!(
            text.contains(&format!("{} is a symbolic link", credentials.display())),
            "{text}"
        );
        assert!(!text.contains(SECRET), "{text}");
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            "[theirs]\nkey = value\n"
        );
        assert!(
            std::fs::symlink_metadata(&credentials)
                .unwrap()
                .is_symlink()
        );
        assert!(
            !config.exists(),
            "nothing is written when one file is refused"
        );
        // A dangling link, and a link at the config file, are refused as well.
        std::fs::remove_file(&credentials).unwrap();
        std::os::unix::fs::symlink(home.path().join("nothing"), &config).unwrap();
        let e = write_profile(home.path(), "stratus", &key("AKIANEW", SECRET), "us-east-2");
        assert!(matches!(e, Err(AwsFilesError::Symlink { ref path, .. }) if *path == config));
        assert!(!credentials.exists() && !home.path().join("nothing").exists());
    }

    #[test]
    fn a_symlinked_aws_dir_is_refused_and_nothing_is_written_where_it_points() {
        let home = tempfile::tempdir().unwrap();
        let (dir, ..) = aws(home.path());
        let elsewhere = home.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
        let e = write_profile(home.path(), "stratus", &key("AKIANEW", SECRET), "us-east-2");
        let e = e.err().unwrap();
        assert!(matches!(e, AwsFilesError::Symlink { ref path, .. } if *path == dir));
        assert!(all_text(e).contains("symbolic link"));
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        assert!(check_profile(home.path(), "stratus").is_err());
    }

    #[test]
    fn what_is_not_a_regular_file_or_directory_is_refused_by_its_kind() {
        let home = tempfile::tempdir().unwrap();
        let (dir, credentials, config) = aws(home.path());
        std::fs::write(&dir, "").unwrap();
        let e = write_profile(home.path(), "stratus", &key("AKIANEW", SECRET), "us-east-2");
        assert_eq!(
            e.err().unwrap().to_string(),
            format!(
                "{} is a regular file, not a directory; stratus writes AWS credentials only there",
                dir.display()
            )
        );
        std::fs::remove_file(&dir).unwrap();
        std::fs::create_dir(&dir).unwrap();
        std::fs::create_dir(&credentials).unwrap();
        let e = write_profile(home.path(), "stratus", &key("AKIANEW", SECRET), "us-east-2");
        assert!(matches!(
            e,
            Err(AwsFilesError::WrongType {
                found: "a directory",
                ..
            })
        ));
        std::fs::remove_dir(&credentials).unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(&config).unwrap();
        let e = write_profile(home.path(), "stratus", &key("AKIANEW", SECRET), "us-east-2");
        assert!(matches!(
            e,
            Err(AwsFilesError::WrongType { found: "a socket", ref path, .. }) if *path == config
        ));
        assert!(!credentials.exists());
    }

    #[test]
    fn another_uid_s_dir_or_file_is_refused() {
        let home = tempfile::tempdir().unwrap();
        let (dir, credentials, _) = aws(home.path());
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(&credentials, "[default]\n").unwrap();
        let other = uid().wrapping_add(1);
        let e = open_dir(&dir, other).err().unwrap();
        assert!(
            matches!(e, AwsFilesError::Owner { owner, uid: u, .. } if owner == uid() && u == other)
        );
        let e = read_current(&credentials, other).err().unwrap();
        assert_eq!(
            e.to_string(),
            format!(
                "{} belongs to uid {}, not to you (uid {other}); stratus writes AWS credentials \
                 only into your own files",
                credentials.display(),
                uid()
            )
        );
        let e = write_profile_as(home.path(), "stratus", &key("A", SECRET), "r", other);
        assert!(matches!(e, Err(AwsFilesError::Owner { ref path, .. }) if *path == dir));
        assert_eq!(
            std::fs::read_to_string(&credentials).unwrap(),
            "[default]\n"
        );
    }

    #[test]
    fn a_rotation_replaces_the_key_and_keeps_everything_else() {
        let home = tempfile::tempdir().unwrap();
        let (_, credentials, config) = aws(home.path());
        write_profile(home.path(), "stratus", &key("AKIAOLD", SECRET), "us-east-2").unwrap();
        // The student adds their own profiles and settings around ours.
        let mine =
            "# personal\n[default]\naws_access_key_id = AKIAMINE\naws_secret_access_key = m\n\n";
        let text = std::fs::read_to_string(&credentials).unwrap();
        std::fs::write(&credentials, format!("{mine}{text}\n[later]\nx = 1\n")).unwrap();
        let text = std::fs::read_to_string(&config).unwrap();
        let config_text = format!(
            "{text}s3 =\n  max_concurrent_requests = 10\n\n[default]\nregion = eu-west-1\n"
        );
        std::fs::write(&config, &config_text).unwrap();
        let w = write_profile(
            home.path(),
            "stratus",
            &key("AKIANEW", NEW_SECRET),
            "us-east-2",
        );
        let w = w.unwrap();
        assert_eq!(w.created_dir, None);
        assert_eq!(w.credentials.change, FileChange::SectionEdited);
        assert_eq!(w.config.change, FileChange::Unchanged);
        assert_eq!(
            std::fs::read_to_string(&credentials).unwrap(),
            format!(
                "{mine}[stratus]\naws_access_key_id = AKIANEW\naws_secret_access_key = \
                 {NEW_SECRET}\n\n[later]\nx = 1\n"
            )
        );
        assert_eq!(std::fs::read_to_string(&config).unwrap(), config_text);
        assert_eq!(
            w.to_string(),
            format!(
                "updated [stratus] in {}\n[profile stratus] in {} was already up to date",
                credentials.display(),
                config.display()
            )
        );
        assert!(!format!("{w}{w:?}").contains(NEW_SECRET));
        // The same key again changes nothing; a new region is set in place.
        let w = write_profile(
            home.path(),
            "stratus",
            &key("AKIANEW", NEW_SECRET),
            "eu-north-1",
        );
        let w = w.unwrap();
        assert_eq!(w.credentials.change, FileChange::Unchanged);
        assert_eq!(w.config.change, FileChange::SectionEdited);
        assert_eq!(
            std::fs::read_to_string(&config).unwrap(),
            config_text.replace("region = us-east-2", "region = eu-north-1")
        );
    }

    #[test]
    fn a_file_with_a_looser_mode_is_replaced_by_a_0600_one() {
        let home = tempfile::tempdir().unwrap();
        let (dir, credentials, config) = aws(home.path());
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        std::fs::write(&credentials, "[default]\nregion = x\n").unwrap();
        std::fs::set_permissions(&credentials, Permissions::from_mode(0o644)).unwrap();
        let w = write_profile(home.path(), "stratus", &key("AKIANEW", SECRET), "us-east-2");
        let w = w.unwrap();
        assert_eq!(mode(&credentials), 0o600);
        assert_eq!(mode(&config), 0o600);
        assert_eq!(mode(&dir), 0o755, "an existing ~/.aws keeps its mode");
        assert_eq!(w.credentials.change, FileChange::SectionAdded);
        assert_eq!(w.credentials.old_mode, Some(0o644));
        assert_eq!(
            w.credentials.to_string(),
            format!(
                "added [stratus] to {} (its mode was 0644, it is 0600 now)",
                credentials.display()
            )
        );
        // Up to date but 0644: rewritten 0600.
        std::fs::set_permissions(&config, Permissions::from_mode(0o644)).unwrap();
        let w = write_profile(home.path(), "stratus", &key("AKIANEW", SECRET), "us-east-2");
        let w = w.unwrap();
        assert_eq!(w.config.change, FileChange::Unchanged);
        assert_eq!(w.config.old_mode, Some(0o644));
        assert_eq!(mode(&config), 0o600);
    }

    #[test]
    fn a_file_that_cannot_be_merged_stops_both_and_check_profile_says_so_first() {
        let home = tempfile::tempdir().unwrap();
        let (dir, credentials, config) = aws(home.path());
        assert!(check_profile(home.path(), "stratus").is_ok());
        assert!(!dir.exists(), "a check writes nothing");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(&credentials, "[default]\n").unwrap();
        std::fs::write(&config, "[profile stratus]\n[default]\n[profile stratus]\n").unwrap();
        let e = check_profile(home.path(), "stratus").err().unwrap();
        assert_eq!(
            e.to_string(),
            format!(
                "{} has the section [profile stratus] more than once (lines 1 and 3), which the \
                 AWS CLI cannot read either; merge them into one and run again",
                config.display()
            )
        );
        let e = write_profile(home.path(), "stratus", &key("AKIANEW", SECRET), "us-east-2");
        assert!(matches!(e, Err(AwsFilesError::DuplicateSection { .. })));
        assert_eq!(
            std::fs::read_to_string(&credentials).unwrap(),
            "[default]\n"
        );
    }

    #[test]
    fn odd_inputs_are_refused_by_name() {
        let home = tempfile::tempdir().unwrap();
        let k = key("AKIANEW", SECRET);
        let e = write_profile(Path::new("home/ann"), "stratus", &k, "r");
        assert!(matches!(e, Err(AwsFilesError::Home { .. })));
        let e = write_profile(home.path(), "my profile", &k, "r");
        assert!(matches!(e, Err(AwsFilesError::Profile { .. })));
        let e = write_profile(
            home.path(),
            "stratus",
            &key("AKIANEW", "sEcReT\nvalue"),
            "r",
        );
        let e = e.err().unwrap();
        assert!(
            matches!(e, AwsFilesError::BadValue { ref key, .. } if key == "aws_secret_access_key")
        );
        assert!(!all_text(e).contains("sEcReT"));
        let (dir, credentials, _) = aws(home.path());
        assert!(!dir.exists());
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(&credentials, [0xff, 0xfe, b'\n']).unwrap();
        let e = write_profile(home.path(), "stratus", &k, "r");
        assert!(matches!(e, Err(AwsFilesError::NotText { .. })));
        std::fs::write(&credentials, vec![b'#'; MAX_FILE_BYTES as usize + 1]).unwrap();
        let e = write_profile(home.path(), "stratus", &k, "r");
        assert!(matches!(e, Err(AwsFilesError::TooLarge { .. })));
    }
}
