//! Who is running stratus: the user of the real uid, never of the environment (`USER`, `HOME`)
//! or of a request. The runner of a multi-user install learns its caller the same way, since a
//! setuid program keeps the caller's real uid; the caller's groups come from the system's group
//! database, not from the process (whose supplementary groups the wrapper dropped).

use crate::core::error::Error;
use crate::core::model::Owner;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub owner: Owner,
    /// The names of the user's groups, primary first, from the group database.
    pub groups: Vec<String>,
}

impl Caller {
    /// The user of this process's real uid.
    pub fn from_real_uid() -> Result<Self, Error> {
        Self::of_uid(crate::sys::real_uid())
    }

    pub fn of_uid(uid: u32) -> Result<Self, Error> {
        let entry = crate::sys::passwd(uid)
            .map_err(|e| Error::runtime(format!("cannot look up uid {uid}")).with_source(e))?
            .ok_or_else(|| {
                Error::runtime(format!("uid {uid} has no entry in the password database"))
            })?;
        let owner = Owner::parse(&entry.name)?;
        let groups = crate::sys::group_names(&entry.name, entry.gid).map_err(|e| {
            Error::runtime(format!("cannot look up the groups of {}", entry.name)).with_source(e)
        })?;
        Ok(Self { uid, owner, groups })
    }
}
