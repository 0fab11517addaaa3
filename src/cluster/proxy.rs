//! `stratus proxy`: a SOCKS5 proxy on 127.0.0.1 whose connections are opened from the master,
//! through one SSH connection to it (host key pinned), as hadoop-ec2's `proxy` did. Hadoop's web
//! UIs and REST APIs accept jobs and files from anyone who reaches them, so clusters open only SSH
//! to the world, and a user browses the UIs through this.
//!
//! SOCKS5 (RFC 1928) without authentication, CONNECT only, to IPv4, IPv6 or domain-name
//! destinations; names are resolved on the master (`curl --socks5-hostname`, or a browser set to
//! proxy DNS), so a node's private name or address works as on the cluster.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::cluster::ssh::Session;
use crate::error::Error;

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
