//! The stack's loopback ports, by name: which component listens where, which
//! of them the user pinned, and picking free ones for the rest.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use super::{LocalError, Ports, io_err};

/// Every port of one stack.
#[derive(Debug, Clone, Copy)]
pub struct StackPorts {
    /// The host plane.
    pub host: Ports,
    /// KWOK's kubelet API (logs, exec, port-forward of the fake nodes).
    pub kwok: u16,
    /// The virtual plane.
    pub virt: Ports,
    /// The syncer's health and metrics endpoint.
    pub syncer_health: u16,
    /// The syncer's front door.
    pub front_door: u16,
    /// The syncer's DNS server (UDP and TCP).
    pub dns: u16,
    /// The syncer's waking page (sleep mode).
    pub wake: u16,
}

impl StackPorts {
    /// Free ports for every component, with the API servers on `host_api`
    /// and `virtual_api` when given (those must be free). All are held open
    /// until every one is chosen, so they are distinct.
    pub fn pick(host_api: Option<u16>, virtual_api: Option<u16>) -> Result<Self, LocalError> {
        let mut held = Vec::new();
        let mut next = |want: Option<u16>| -> Result<u16, LocalError> {
            let listener = bind(want.unwrap_or(0))?;
            let port = listener
                .local_addr()
                .map_err(io_err("read a bound port"))?
                .port();
            held.push(listener);
            Ok(port)
        };
        // Pinned ports first, so a taken one fails before anything else is bound.
        let host_apiserver = next(host_api)?;
        let virtual_apiserver = next(virtual_api)?;
        let mut plane = |apiserver: u16, scheduler: bool| -> Result<Ports, LocalError> {
            Ok(Ports {
                etcd_client: next(None)?,
                etcd_peer: next(None)?,
                apiserver,
                controller_manager: next(None)?,
                scheduler: if scheduler { Some(next(None)?) } else { None },
            })
        };
        let host = plane(host_apiserver, true)?;
        let virt = plane(virtual_apiserver, false)?;
        Ok(Self {
            host,
            virt,
            kwok: next(None)?,
            syncer_health: next(None)?,
            front_door: next(None)?,
            dns: next(None)?,
            wake: next(None)?,
        })
    }
}

fn bind(port: u16) -> Result<TcpListener, LocalError> {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).map_err(|source| match source
        .kind()
    {
        std::io::ErrorKind::AddrInUse => LocalError::PortInUse { port },
        _ => LocalError::Io {
            what: format!("bind 127.0.0.1:{port}"),
            source,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(p: &StackPorts) -> Vec<u16> {
        let plane = |q: &Ports| {
            [
                q.etcd_client,
                q.etcd_peer,
                q.apiserver,
                q.controller_manager,
            ]
            .into_iter()
            .chain(q.scheduler)
        };
        plane(&p.host)
            .chain(plane(&p.virt))
            .chain([p.kwok, p.syncer_health, p.front_door, p.dns, p.wake])
            .collect()
    }

    #[test]
    fn requested_port_in_use_is_named() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = StackPorts::pick(None, Some(port)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("port {port} on 127.0.0.1 is already in use")
        );
        let free = all(&StackPorts::pick(None, None).unwrap());
        let mut dedup = free.clone();
        dedup.sort_unstable();
        dedup.dedup();
        assert_eq!(dedup.len(), 14, "{free:?}");
    }

    #[test]
    fn pinned_ports_go_to_the_api_servers() {
        let (p, q) = {
            let a = TcpListener::bind("127.0.0.1:0").unwrap();
            let b = TcpListener::bind("127.0.0.1:0").unwrap();
            (
                a.local_addr().unwrap().port(),
                b.local_addr().unwrap().port(),
            )
        };
        let ports = StackPorts::pick(Some(p), Some(q)).unwrap();
        assert_eq!(ports.host.apiserver, p);
        assert_eq!(ports.virt.apiserver, q);
        assert!(ports.host.scheduler.is_some());
        assert!(ports.virt.scheduler.is_none());
    }
}
