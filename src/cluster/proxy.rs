//! `stratus proxy`: a SOCKS5 proxy on 127.0.0.1 whose connections are opened from the master,
//! through one SSH connection to it (host key pinned), as hadoop-ec2's `proxy` did. Hadoop's web
//! UIs and REST APIs accept jobs and files from anyone who reaches them, so clusters open only SSH
//! to the world, and a user browses the UIs through this.
//!
//! SOCKS5 (RFC 1928) without authentication, CONNECT only, to IPv4, IPv6 or domain-name
//! destinations; names are resolved on the master (`curl --socks5-hostname`, or a browser set to
//! proxy DNS), so a node's private name or address works as on the cluster.
//!
//! The listener is on loopback, but a lab machine has other users: a connection is served only
//! if the kernel says it comes from a socket of this user (`/proc/net/tcp`, as identd reads
//! it), so nobody else on the machine reaches the cluster's web UIs through it.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::cluster::ssh::Session;
use crate::core::error::Error;

/// Serves SOCKS5 on `listener` until `stop` resolves or the SSH connection drops.
pub async fn serve(
    listener: TcpListener,
    session: Arc<Session>,
    stop: impl Future<Output = ()>,
) -> Result<(), Error> {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return Ok(()),
            accepted = listener.accept() => {
                let (stream, peer) = accepted?;
                let local = stream.local_addr()?;
                let me = crate::sys::real_uid();
                match peer_uid(local, peer) {
                    Some(uid) if uid == me => {}
                    other => {
                        tracing::warn!(%peer, uid = ?other, "refused a proxy connection from another user");
                        continue;
                    }
                }
                if session.is_closed() {
                    return Err(Error::runtime(format!(
                        "the SSH connection to {} closed",
                        session.node
                    )));
                }
                let session = session.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, &session).await {
                        tracing::info!(%peer, "proxy connection: {e}");
                    }
                });
            }
        }
    }
}

/// SOCKS5 reply codes.
const SUCCEEDED: u8 = 0;
const GENERAL_FAILURE: u8 = 1;
const COMMAND_NOT_SUPPORTED: u8 = 7;
const ADDRESS_NOT_SUPPORTED: u8 = 8;

async fn reply(stream: &mut TcpStream, code: u8) -> std::io::Result<()> {
    // The bound address is not meaningful through a tunnel: 0.0.0.0:0.
    stream.write_all(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]).await
}

async fn handle(mut stream: TcpStream, session: &Session) -> Result<(), Error> {
    let bad = |what: &str| Error::runtime(format!("not a SOCKS5 client: {what}"));
    // Greeting: version, methods. Only "no authentication" is offered: the listener is on
    // loopback, for this user.
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await?;
    if head[0] != 5 {
        return Err(bad("wrong version"));
    }
    let mut methods = vec![0u8; usize::from(head[1])];
    stream.read_exact(&mut methods).await?;
    if !methods.contains(&0) {
        stream.write_all(&[5, 0xff]).await?;
        return Err(bad("no acceptable authentication method"));
    }
    stream.write_all(&[5, 0]).await?;
    // Request: version, command, reserved, address type, address, port.
    let mut req = [0u8; 4];
    stream.read_exact(&mut req).await?;
    if req[0] != 5 {
        return Err(bad("wrong version"));
    }
    let host = match req[3] {
        1 => {
            let mut a = [0u8; 4];
            stream.read_exact(&mut a).await?;
            Ipv4Addr::from(a).to_string()
        }
        3 => {
            let mut len = [0u8; 1];
            stream.read_exact(&mut len).await?;
            let mut name = vec![0u8; usize::from(len[0])];
            stream.read_exact(&mut name).await?;
            String::from_utf8(name).map_err(|_| bad("a host name that is not UTF-8"))?
        }
        4 => {
            let mut a = [0u8; 16];
            stream.read_exact(&mut a).await?;
            Ipv6Addr::from(a).to_string()
        }
        _ => {
            reply(&mut stream, ADDRESS_NOT_SUPPORTED).await?;
            return Err(bad("unknown address type"));
        }
    };
    let mut port = [0u8; 2];
    stream.read_exact(&mut port).await?;
    let port = u16::from_be_bytes(port);
    if req[1] != 1 {
        reply(&mut stream, COMMAND_NOT_SUPPORTED).await?;
        return Err(bad("only CONNECT is supported"));
    }
    let mut remote = match session.tunnel(&host, port).await {
        Ok(r) => r,
        Err(e) => {
            reply(&mut stream, GENERAL_FAILURE).await?;
            return Err(e.into());
        }
    };
    reply(&mut stream, SUCCEEDED).await?;
    tokio::io::copy_bidirectional(&mut stream, &mut remote).await?;
    Ok(())
}

/// The uid owning the socket at `peer` connected to `local`, from the kernel's table of TCP
/// sockets (`/proc/net/tcp`, `/proc/net/tcp6`).
fn peer_uid(local: std::net::SocketAddr, peer: std::net::SocketAddr) -> Option<u32> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .find_map(|table| uid_in(&table, peer, local))
}

/// The uid of the line of `table` whose local address is `ours` and remote address `theirs`.
fn uid_in(table: &str, ours: std::net::SocketAddr, theirs: std::net::SocketAddr) -> Option<u32> {
    let (want_local, want_remote) = (hex_addr(ours), hex_addr(theirs));
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid ...
        let (l, r, uid) = (f.get(1)?, f.get(2)?, f.get(7)?);
        (l.eq_ignore_ascii_case(&want_local) && r.eq_ignore_ascii_case(&want_remote))
            .then(|| uid.parse().ok())
            .flatten()
    })
}

/// An address as `/proc/net/tcp` writes it: the IP in host-order 32-bit words, in hex, then the
/// port. An IPv4 address in the tcp6 table is its v4-mapped form.
fn hex_addr(a: std::net::SocketAddr) -> String {
    match a {
        std::net::SocketAddr::V4(v4) => {
            format!(
                "{:08X}:{:04X}",
                u32::from_ne_bytes(v4.ip().octets()),
                v4.port()
            )
        }
        std::net::SocketAddr::V6(v6) => {
            let o = v6.ip().octets();
            let words: String = o
                .chunks(4)
                .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
                .collect();
            format!("{words}:{:04X}", v6.port())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_table_names_the_owner_of_a_connection() {
        // A real connection on loopback: its client socket is this process's, so this uid's.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        assert_eq!(
            peer_uid(server.local_addr().unwrap(), peer),
            Some(crate::sys::real_uid())
        );
        drop(client);
        // A line of another user is read as theirs.
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:9C40 0100007F:1A0A 01 00000000:00000000 00:00000000 00000000  1001        0 1\n";
        let ours: std::net::SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let theirs: std::net::SocketAddr = "127.0.0.1:6666".parse().unwrap();
        assert_eq!(uid_in(table, ours, theirs), Some(1001));
        assert_eq!(uid_in(table, theirs, ours), None);
    }
}
