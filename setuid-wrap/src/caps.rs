//! The one file capability the wrapper holds, and the bytes the installer writes for it.
//!
//! A setuid program owned by a non-root account cannot call `setgroups`, so without help it
//! would hand the caller's supplementary groups (say, a group that may read a shared secret) to
//! the runner. The installer therefore grants `cap_setgid=ep` on the wrapper by writing the
//! `security.capability` extended attribute (`vfs_cap_data` revision 2, see capabilities(7) and
//! `include/uapi/linux/capability.h`). The wrapper uses it to set its groups, then drops every
//! capability before it execs the runner. This module only builds bytes; `sys` does the calls.
#![forbid(unsafe_code)]

/// The name of the extended attribute that carries file capabilities.
pub const CAPABILITY_XATTR: &str = "security.capability";

/// `CAP_SETGID` from `linux/capability.h`.
pub const CAP_SETGID: u32 = 6;

const VFS_CAP_REVISION_2: u32 = 0x0200_0000;
const VFS_CAP_FLAGS_EFFECTIVE: u32 = 0x0000_0001;

/// The value of the [`CAPABILITY_XATTR`] (`security.capability`) attribute that grants
/// `cap_setgid=ep`: `vfs_cap_data` revision 2, 20 bytes little-endian: `magic_etc`
/// (revision 2 | effective flag), then permitted and inheritable words for capabilities 0-31
/// and 32-63. The installer sets it with `setxattr(wrapper, "security.capability", value, 0)`
/// after its `chown` and `chmod` (both clear file capabilities).
pub fn setgid_capability_xattr() -> [u8; 20] {
    let words: [u32; 5] = [
        VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE,
        1 << CAP_SETGID, // permitted, capabilities 0-31
        0,               // inheritable, capabilities 0-31
        0,               // permitted, capabilities 32-63
        0,               // inheritable, capabilities 32-63
    ];
    let mut out = [0u8; 20];
    for (chunk, word) in out.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_xattr_is_revision_2_effective_with_setgid_permitted() {
        // The same bytes `setcap cap_setgid=ep FILE` writes (checked with getfattr -e hex).
        assert_eq!(
            setgid_capability_xattr(),
            [
                0x01, 0x00, 0x00, 0x02, 0x40, 0x00, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
            ]
        );
    }
}
