//! Traffic between the machine's loopback and the real node's network
//! namespace, carried by the supervisor itself so that no interface, route or
//! firewall rule of the machine changes:
//!
//! - **relays**: a listener opened *inside* the namespace (a socket keeps the
//!   namespace it was created in) whose connections are forwarded to a port
//!   on the machine's 127.0.0.1 (the kubelet, kube-proxy and pods reach the
//!   host API server this way);
//! - **the API servers' egress proxy**: an HTTP CONNECT proxy on a Unix
//!   socket, named in their `--egress-selector-config-file` for the `cluster`
//!   egress (kubelet API, pod and service proxy, webhooks). It dials loopback
//!   targets (KWOK's node API) on the machine and every other address inside
//!   the namespace, where only the node, its pods and its services exist: a
//!   packet for anywhere else meets the namespace's `unreachable` default
//!   route, never the machine's network.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::task::JoinHandle;

use super::LocalError;

/// A network namespace, held open by a file of `/proc/<pid>/ns/net`.
#[derive(Debug, Clone)]
pub struct NetNs(Arc<File>);

impl NetNs {
    /// The network namespace of process `pid`.
    pub fn of_pid(pid: u32) -> Result<Self, LocalError> {
        let path = format!("/proc/{pid}/ns/net");
        File::open(&path)
            .map(|f| Self(Arc::new(f)))
            .map_err(super::io_err(format!("open {path}")))
    }

    /// Runs `f` on a fresh thread that has entered the namespace; sockets
    /// `f` creates stay in it.
    fn run_inside<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let ns = Arc::clone(&self.0);
        std::thread::spawn(move || {
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&*ns),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
            f()
        })
        .join()
        .map_err(|_| std::io::Error::other("namespace thread panicked"))?
    }

    /// A listener bound to `addr` inside the namespace.
    pub fn listen(&self, addr: SocketAddr) -> Result<tokio::net::TcpListener, LocalError> {
        let l = self
            .run_inside(move || {
                let l = TcpListener::bind(addr)?;
                l.set_nonblocking(true)?;
                Ok(l)
            })
            .map_err(super::io_err(format!(
                "listen on {addr} in the node namespace"
            )))?;
        tokio::net::TcpListener::from_std(l)
            .map_err(super::io_err(format!("register listener {addr}")))
    }

    /// A UDP socket bound to `addr` inside the namespace.
    pub fn bind_udp(&self, addr: SocketAddr) -> Result<tokio::net::UdpSocket, LocalError> {
        let s = self
            .run_inside(move || {
                let s = std::net::UdpSocket::bind(addr)?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .map_err(super::io_err(format!(
                "bind UDP {addr} in the node namespace"
            )))?;
        tokio::net::UdpSocket::from_std(s).map_err(super::io_err(format!("register UDP {addr}")))
    }

    /// A connection to `addr` made inside the namespace.
    pub async fn dial(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        let me = self.clone();
        let s = tokio::task::spawn_blocking(move || {
            me.run_inside(move || {
                let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
        })
        .await
        .map_err(std::io::Error::other)??;
        tokio::net::TcpStream::from_std(s)
    }
}

/// Forwards every connection accepted by `listener` to 127.0.0.1:`port` on
/// the machine.
pub fn relay_to_loopback(listener: tokio::net::TcpListener, port: u16) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    })
}

/// Forwards every datagram received on `socket` to 127.0.0.1:`port` on the
/// machine, one exchange per datagram (DNS: one query, one answer), and sends
/// the answer back from `socket`, so it leaves from the address the query
/// was sent to. An answer that does not come within five seconds is dropped,
/// as a lost datagram would be.
pub fn relay_udp_to_loopback(socket: tokio::net::UdpSocket, port: u16) -> JoinHandle<()> {
    let socket = Arc::new(socket);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                continue;
            };
            let query = buf[..n].to_vec();
            let socket = Arc::clone(&socket);
            tokio::spawn(async move {
                let exchange = async {
                    let out = tokio::net::UdpSocket::bind(("127.0.0.1", 0)).await?;
                    out.connect(("127.0.0.1", port)).await?;
                    out.send(&query).await?;
                    let mut answer = vec![0u8; 65_535];
                    let n = out.recv(&mut answer).await?;
                    answer.truncate(n);
                    Ok::<_, std::io::Error>(answer)
                };
                if let Ok(Ok(answer)) = tokio::time::timeout(Duration::from_secs(5), exchange).await
                {
                    let _ = socket.send_to(&answer, from).await;
                }
            });
        }
    })
}

/// The API servers' egress selector configuration: `cluster` traffic goes
/// through the HTTP CONNECT proxy on `socket`.
pub fn egress_config(socket: &Path) -> String {
    serde_json::json!({
        "apiVersion": "apiserver.k8s.io/v1beta1",
        "kind": "EgressSelectorConfiguration",
        "egressSelections": [{
            "name": "cluster",
            "connection": {
                "proxyProtocol": "HTTPConnect",
                "transport": {"uds": {"udsName": socket.display().to_string()}},
            },
        }],
    })
    .to_string()
}

/// Serves HTTP CONNECT on the Unix socket `socket`: loopback targets are
/// dialled on the machine, all others inside `ns`.
pub fn egress_proxy(socket: &Path, ns: NetNs) -> Result<JoinHandle<()>, LocalError> {
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket)
        .map_err(super::io_err(format!("listen on {}", socket.display())))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let ns = ns.clone();
            tokio::spawn(async move {
                if let Err(e) = connect_one(conn, &ns).await {
                    tracing::debug!(error = %e, "egress proxy connection ended");
                }
            });
        }
    }))
}

/// The `host:port` of a CONNECT request head, if it is one.
pub fn connect_target(head: &str) -> Option<SocketAddr> {
    let line = head.lines().next()?;
    let mut parts = line.split_whitespace();
    if parts.next()? != "CONNECT" {
        return None;
    }
    parts.next()?.parse().ok()
}

async fn connect_one(mut conn: tokio::net::UnixStream, ns: &NetNs) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte: nothing after the head may be consumed here.
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 || conn.read(&mut byte).await? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let Some(target) = connect_target(&String::from_utf8_lossy(&head)) else {
        conn.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await?;
        return Ok(());
    };
    let out = if target.ip().is_loopback() {
        tokio::net::TcpStream::connect(target).await
    } else {
        ns.dial(target).await
    };
    match out {
        Ok(mut out) => {
            conn.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await?;
            tokio::io::copy_bidirectional(&mut conn, &mut out).await?;
        }
        Err(e) => {
            tracing::debug!(%target, error = %e, "egress proxy cannot reach the target");
            conn.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_target_reads_the_request_line() {
        assert_eq!(
            connect_target("CONNECT 10.246.0.2:10250 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some("10.246.0.2:10250".parse().unwrap())
        );
        assert_eq!(connect_target("GET / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(connect_target("CONNECT node:10250 HTTP/1.1\r\n\r\n"), None);
    }

    #[test]
    fn egress_config_names_the_socket() {
        let v: serde_json::Value =
            serde_json::from_str(&egress_config(Path::new("/s/egress.sock"))).unwrap();
        let sel = &v["egressSelections"][0];
        assert_eq!(sel["name"], "cluster");
        assert_eq!(
            sel["connection"]["transport"]["uds"]["udsName"],
            "/s/egress.sock"
        );
    }
}
