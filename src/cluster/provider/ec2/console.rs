//! Host keys from an instance's console output. cloud-init prints the instance's SSH host public
//! keys to the console at the end of its first boot (its `keys_to_console` module), one OpenSSH
//! line each, between two marker lines:
//!
//! ```text
//! -----BEGIN SSH HOST KEY KEYS-----
//! ecdsa-sha2-nistp256 AAAAE2VjZHNh... root@ip-10-0-0-5
//! ssh-ed25519 AAAAC3NzaC1lZDI1... root@ip-10-0-0-5
//! -----END SSH HOST KEY KEYS-----
//! ```
//!
//! The console is EC2's channel from the hypervisor, not the network, so a key read there can be
//! pinned before first contact: a man in the middle presenting another key is refused.
//!
//! The console also carries kernel and boot messages, which may interleave with the block, and
//! EC2 keeps only its last 64 KiB. So only lines between the markers count; on each, a key is a
//! key type followed by a base64 blob that parses as that type's public key (anything before
//! the type, such as a timestamp, and the comment after the blob are ignored); lines that hold
//! no such key are skipped. A block whose end marker is not there yet is not read. With several
//! complete blocks (a reboot prints them again) the last one counts.

use russh::keys::PublicKey;

pub const BEGIN: &str = "-----BEGIN SSH HOST KEY KEYS-----";
pub const END: &str = "-----END SSH HOST KEY KEYS-----";

/// The host keys the last complete block of `output` lists, in its order and without
/// duplicates; `None` while no complete block is there. A complete block with no key in it is
/// `Some` of nothing.
pub fn host_keys(output: &str) -> Option<Vec<PublicKey>> {
    let mut block: Option<Vec<PublicKey>> = None;
    let mut found: Option<Vec<PublicKey>> = None;
    for line in output.lines() {
        let line = line.trim_end_matches('\r');
        if line.contains(BEGIN) {
            // A begin marker inside an unfinished block starts it over.
            block = Some(Vec::new());
        } else if line.contains(END) {
            if let Some(keys) = block.take() {
                found = Some(keys);
            }
        } else if let Some(keys) = block.as_mut()
            && let Some(key) = key_in(line)
            && !keys.iter().any(|k| k.key_data() == key.key_data())
        {
            keys.push(key);
        }
    }
    found
}

/// The first `type blob` pair of a line that parses as a public key.
fn key_in(line: &str) -> Option<PublicKey> {
    let words: Vec<&str> = line.split_whitespace().collect();
    words.windows(2).find_map(|w| {
        let (kind, blob) = (w[0], w[1]);
        if !(kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-")) {
            return None;
        }
        let key = PublicKey::from_openssh(&format!("{kind} {blob}")).ok()?;
        // The type named must be the blob's own (the blob carries its type too).
        (key.algorithm().as_str() == kind).then_some(key)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ssh;

    fn key() -> PublicKey {
        ssh::generate_key().unwrap().public_key().clone()
    }

    fn line(k: &PublicKey) -> String {
        ssh::public_key_openssh(k)
    }

    #[test]
    fn no_block_is_none() {
        assert!(host_keys("").is_none());
        assert!(host_keys("Linux version 6.8\ncloud-init: done\n").is_none());
        // A key outside the markers does not count.
        assert!(host_keys(&format!("{}\n", line(&key()))).is_none());
    }

    #[test]
    fn an_unfinished_block_is_none() {
        let text = format!("boot\n{BEGIN}\n{} root@h\n", line(&key()));
        assert!(host_keys(&text).is_none());
        // An end marker without a begin (the start cut off) neither.
        let text = format!("{} root@h\n{END}\n", line(&key()));
        assert!(host_keys(&text).is_none());
    }

    #[test]
    fn several_keys_with_comments_crlf_and_junk() {
        let (a, b) = (key(), key());
        let text = format!(
            "[    3.1] kernel: something\r\n{BEGIN}\r\n{} root@ip-10-0-0-5\r\n\
             [   25.04] cloud-init[812]: interleaved message\r\nnot a key at all\r\n\
             ssh-ed25519 !!!notbase64!!! root@x\r\nssh-rsa AAAA\r\n\
             ecdsa-sha2-nistp256 {} root@h\r\n{}\r\n{} duplicate\r\n{END}\r\nafter\r\n",
            line(&a),
            // The type named is not the blob's: ignored.
            line(&b).split_whitespace().nth(1).unwrap(),
            line(&b),
            line(&a),
        );
        let keys = host_keys(&text).unwrap();
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert_eq!(keys[0].key_data(), a.key_data());
        assert_eq!(keys[1].key_data(), b.key_data());
    }

    #[test]
    fn a_prefix_before_the_key_type_is_skipped() {
        let a = key();
        let text = format!("ec2: {BEGIN}\nec2: {} root@h\nec2: {END}\n", line(&a));
        let keys = host_keys(&text).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].key_data(), a.key_data());
    }

    #[test]
    fn the_last_complete_block_counts() {
        let (a, b) = (key(), key());
        let text = format!(
            "{BEGIN}\n{}\n{END}\nreboot\n{BEGIN}\n{}\n{END}\n{BEGIN}\n{}\n",
            line(&a),
            line(&b),
            line(&a)
        );
        let keys = host_keys(&text).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].key_data(), b.key_data());
    }

    #[test]
    fn an_empty_block_is_some_of_nothing() {
        let text = format!("{BEGIN}\njunk\n{END}\n");
        assert_eq!(host_keys(&text).map(|k| k.len()), Some(0));
    }
}
