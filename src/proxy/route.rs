//! Which requests leave the virtual API: the strict parser of the pod
//! subresources the front door sends to the host (`pods/log`, `pods/exec`,
//! `pods/attach`, `pods/portforward`). Pure, table-tested with crafted paths.
//!
//! The rule: a path that, once percent-decoded and with `.`, `..` and empty
//! segments resolved, names one of these subresources is redirected only when
//! it was already written in that canonical form (no escapes, no dot segments,
//! no double or trailing slashes) with a valid namespace and pod name, and
//! only with the query parameters the subresource defines. Any other spelling
//! of such a path is refused. Every other path goes to the virtual API, which
//! cannot reach host objects.

use std::borrow::Cow;

/// A pod subresource served by the host's node agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// `pods/log`.
    Log,
    /// `pods/exec`.
    Exec,
    /// `pods/attach`.
    Attach,
    /// `pods/portforward`.
    PortForward,
}

impl Subresource {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "log" => Self::Log,
            "exec" => Self::Exec,
            "attach" => Self::Attach,
            "portforward" => Self::PortForward,
            _ => return None,
        })
    }

    /// The path segment.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Log => "log",
            Self::Exec => "exec",
            Self::Attach => "attach",
            Self::PortForward => "portforward",
        }
    }

    /// The verb kube-apiserver authorizes: `get` for logs; `create` for the
    /// streaming ones, whether asked with POST (SPDY) or GET (WebSocket).
    pub fn verb(self) -> &'static str {
        match self {
            Self::Log => "get",
            Self::Exec | Self::Attach | Self::PortForward => "create",
        }
    }

    /// The query parameters the subresource accepts. Anything else (for
    /// example `insecureSkipTLSVerifyBackend`, which would loosen the host's
    /// own TLS checks) is refused.
    fn allowed_params(self) -> &'static [&'static str] {
        match self {
            Self::Log => &[
                "container",
                "follow",
                "previous",
                "sinceSeconds",
                "sinceTime",
                "timestamps",
                "tailLines",
                "limitBytes",
                "stream",
                "pretty",
            ],
            Self::Exec => &[
                "command",
                "container",
                "stdin",
                "stdout",
                "stderr",
                "tty",
                "input",
                "output",
            ],
            Self::Attach => &["container", "stdin", "stdout", "stderr", "tty"],
            Self::PortForward => &["ports"],
        }
    }
}

/// A redirected request's target in the virtual cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSubresource {
    /// Virtual namespace.
    pub namespace: String,
    /// Virtual pod name.
    pub name: String,
    /// Which subresource.
    pub subresource: Subresource,
    /// The accepted query, re-encoded.
    pub query: String,
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// To the virtual API, as it is.
    Virtual,
    /// To the host pod behind a virtual pod.
    Host(PodSubresource),
    /// Refused with 400 and this message.
    Reject(String),
    /// `nodes/<name>/proxy`: refused with 403 and a message that says why
    /// (virtual Nodes have no kubelet of their own to proxy to).
    NodeProxy(String),
}

/// The message of [`Route::NodeProxy`] for node `name`.
pub fn node_proxy_refusal(name: &str) -> String {
    format!(
        "nodes \"{name}\": the node proxy is not served in a virtual cluster: a virtual Node stands for a host node whose kubelet the tenant may not reach; use pods/log, pods/exec, pods/attach or pods/portforward, which the front door serves"
    )
}

/// Decodes `%XX` escapes; `None` for a malformed escape or non-UTF-8 result.
fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let ok = b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
            if !ok {
                return None;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    percent_encoding::percent_decode_str(s).decode_utf8().ok()
}

/// The segments of a decoded path with empty and `.` segments dropped and
/// `..` applied (never above the root).
fn normalized_segments(decoded: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    out
}

/// True when a path is not in plain form: escapes, empty or dot segments.
fn irregular(path: &str, decoded: &str) -> bool {
    decoded != path
        || path
            .split('/')
            .skip(1)
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
}

/// True for a DNS-1123 subdomain (a pod name).
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && !s.is_empty() && s.split('.').all(crate::translate::names::is_dns_label)
}

/// Decides where a request for `path` with `query` goes.
pub fn classify(path: &str, query: Option<&str>) -> Route {
    let Some(decoded) = percent_decode(path) else {
        return Route::Reject(format!("malformed percent-encoding in path {path:?}"));
    };
    // Whichever of the raw, decoded or normalized path a later layer acts
    // on, look for the subresource shape in the most resolved one.
    let norm = normalized_segments(&decoded);
    // However it is spelled (`<name>:<port>` too).
    if let ["api", "v1", "nodes", node, "proxy", ..] = norm.as_slice() {
        let name = node.split(':').next().unwrap_or(node);
        return Route::NodeProxy(name.to_owned());
    }
    let target = match norm.as_slice() {
        ["api", "v1", "namespaces", ns, "pods", name, sub, rest @ ..] => {
            Subresource::parse(sub).map(|sub| (*ns, *name, sub, rest.is_empty()))
        }
        _ => None,
    };
    let mentions_sub = decoded
        .split('/')
        .any(|s| s == "pods" || Subresource::parse(s).is_some());
    let Some((ns, name, sub, no_trailing)) = target else {
        if mentions_sub && irregular(path, &decoded) {
            // An escaped or dotted spelling that mentions a pod subresource
            // somewhere other than its canonical place: nothing legitimate
            // needs it.
            return Route::Reject(format!(
                "refusing irregular path {path:?}: pod subresources must be requested in canonical form"
            ));
        }
        return Route::Virtual;
    };
    let canonical = format!("/api/v1/namespaces/{ns}/pods/{name}/{}", sub.as_str());
    if !no_trailing || path != canonical {
        return Route::Reject(format!(
            "refusing non-canonical path {path:?} for pods/{}: use {canonical:?}",
            sub.as_str()
        ));
    }
    if !crate::translate::names::is_dns_label(ns) {
        return Route::Reject(format!("invalid namespace {ns:?}"));
    }
    if !is_dns_subdomain(name) {
        return Route::Reject(format!("invalid pod name {name:?}"));
    }
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if !sub.allowed_params().contains(&k.as_ref()) {
            return Route::Reject(format!(
                "query parameter {k:?} is not supported for pods/{}",
                sub.as_str()
            ));
        }
        ser.append_pair(&k, &v);
    }
    Route::Host(PodSubresource {
        namespace: ns.to_owned(),
        name: name.to_owned(),
        subresource: sub,
        query: ser.finish(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(ns: &str, name: &str, sub: Subresource, query: &str) -> Route {
        Route::Host(PodSubresource {
            namespace: ns.into(),
            name: name.into(),
            subresource: sub,
            query: query.into(),
        })
    }

    #[test]
    fn canonical_subresources_go_to_the_host() {
        use Subresource::*;
        for (path, query, want) in [
            (
                "/api/v1/namespaces/team-a/pods/web-1/log",
                Some("container=main&follow=true"),
                host("team-a", "web-1", Log, "container=main&follow=true"),
            ),
            (
                "/api/v1/namespaces/default/pods/web.v2/exec",
                Some("command=echo&command=hi&stdout=true&container=main"),
                host(
                    "default",
                    "web.v2",
                    Exec,
                    "command=echo&command=hi&stdout=true&container=main",
                ),
            ),
            (
                "/api/v1/namespaces/default/pods/p/attach",
                None,
                host("default", "p", Attach, ""),
            ),
            (
                "/api/v1/namespaces/default/pods/p/portforward",
                Some("ports=8080"),
                host("default", "p", PortForward, "ports=8080"),
            ),
        ] {
            assert_eq!(classify(path, query), want, "{path}");
        }
    }

    #[test]
    fn everything_else_goes_to_the_virtual_api() {
        for path in [
            "/api/v1/namespaces/default/pods/p",
            "/api/v1/namespaces/default/pods/p/status",
            "/api/v1/namespaces/default/pods/p/proxy/log",
            "/api/v1/namespaces/default/configmaps/exec",
            "/api/v1/pods",
            "/apis/apps/v1/namespaces/default/deployments/exec",
            "/version",
            "/",
            "/api/v1/namespaces/default/pods/p/eviction",
        ] {
            assert_eq!(classify(path, None), Route::Virtual, "{path}");
        }
    }

    #[test]
    fn node_proxy_is_refused_however_spelled() {
        for path in [
            "/api/v1/nodes/kwok-node-0/proxy",
            "/api/v1/nodes/kwok-node-0/proxy/stats/summary",
            "/api/v1/nodes/kwok-node-0:10250/proxy/metrics",
            "/api/v1/nodes/kwok-node-0/proxy/",
            "/api/v1/namespaces/../nodes/kwok-node-0/proxy/pods",
            "//api/v1/nodes/kwok-node-0/./proxy/configz",
        ] {
            assert_eq!(
                classify(path, None),
                Route::NodeProxy("kwok-node-0".into()),
                "{path}"
            );
        }
        for path in [
            "/api/v1/nodes/kwok-node-0",
            "/api/v1/nodes/kwok-node-0/status",
        ] {
            assert_eq!(classify(path, None), Route::Virtual, "{path}");
        }
    }

    #[test]
    fn crafted_paths_are_refused() {
        for path in [
            // Encoded slashes that would re-split the name.
            "/api/v1/namespaces/default/pods/p%2Fexec",
            "/api/v1/namespaces/default/pods/..%2F..%2Fvcluster-dev%2Fpods%2Fvictim/log",
            "/api/v1/namespaces/default/pods/victim%2F..%2Fother/log",
            // Dot segments, raw and encoded.
            "/api/v1/namespaces/default/pods/x/../victim/log",
            "/api/v1/namespaces/default/pods/./p/log",
            "/api/v1/namespaces/default/pods/%2e%2e/victim/exec",
            "/api/v1/namespaces/x/../vcluster-dev/pods/victim/log",
            // Double and trailing slashes, trailing segments.
            "/api/v1/namespaces/default/pods//p/log",
            "//api/v1/namespaces/default/pods/p/log",
            "/api/v1/namespaces/default/pods/p/log/",
            "/api/v1/namespaces/default/pods/p/exec/extra",
            "/api/v1/namespaces/default/pods/p/log/../../../../../../api/v1/namespaces/h/pods/q/log",
            // Escaped letters in an otherwise canonical path.
            "/api/v1/namespaces/default/pods/p/%6cog",
            "/api/v1/namespaces/def%61ult/pods/p/exec",
            // Malformed escapes.
            "/api/v1/namespaces/default/pods/p%2/log",
            "/api/v1/namespaces/default/pods/p%zz/log",
            // Invalid names.
            "/api/v1/namespaces/Default/pods/p/log",
            "/api/v1/namespaces/default/pods/P_Q/log",
            "/api/v1/namespaces/default/pods/p%00/log",
        ] {
            assert!(
                matches!(classify(path, None), Route::Reject(_)),
                "{path} was not refused: {:?}",
                classify(path, None)
            );
        }
    }

    #[test]
    fn unknown_query_parameters_are_refused() {
        for (path, query) in [
            (
                "/api/v1/namespaces/d/pods/p/log",
                "insecureSkipTLSVerifyBackend=true",
            ),
            ("/api/v1/namespaces/d/pods/p/exec", "command=ls&namespace=h"),
            ("/api/v1/namespaces/d/pods/p/portforward", "ports=1&name=q"),
            ("/api/v1/namespaces/d/pods/p/attach", "ports=1"),
        ] {
            assert!(
                matches!(classify(path, Some(query)), Route::Reject(_)),
                "{path}?{query}"
            );
        }
    }

    #[test]
    fn accepted_queries_are_re_encoded() {
        let Route::Host(t) = classify(
            "/api/v1/namespaces/d/pods/p/exec",
            Some("command=sh&command=-c&command=echo+a%26b%2Fc&stdout=1"),
        ) else {
            panic!("not redirected")
        };
        let pairs: Vec<(String, String)> = form_urlencoded::parse(t.query.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(
            pairs,
            [
                ("command".into(), "sh".into()),
                ("command".into(), "-c".into()),
                ("command".into(), "echo a&b/c".into()),
                ("stdout".into(), "1".into()),
            ]
        );
    }

    #[test]
    fn verbs_match_kube_apiserver() {
        assert_eq!(Subresource::Log.verb(), "get");
        for s in [
            Subresource::Exec,
            Subresource::Attach,
            Subresource::PortForward,
        ] {
            assert_eq!(s.verb(), "create");
        }
    }
}
