//! Routing: which send connector a recipient domain uses, and the next-hop
//! key that groups deliveries (and connections) together.

use std::sync::Arc;

use crate::config::{RouteConfig, RouteKind};

/// Picks routes by recipient domain: an exact domain wins over a
/// `*.suffix` pattern (the longest suffix first), which wins over `*`.
pub struct Router {
    routes: Vec<Arc<RouteConfig>>,
}

/// Where a group of recipients goes next: one queue, one set of
/// connections, one concurrency limit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NextHop {
    /// Index of the route in the configuration.
    pub route: usize,
    /// The domain for MX routes; empty for smarthost and LMTP routes, whose
    /// hosts take every domain.
    pub domain: String,
    /// A plugin asked for TLS: the route's policy is raised to `required`
    /// (and such messages get connections of their own).
    pub require_tls: bool,
}

impl Router {
    /// Routes in configuration order.
    pub fn new(routes: &[RouteConfig]) -> Router {
        Router {
            routes: routes.iter().cloned().map(Arc::new).collect(),
        }
    }

    /// The route for a recipient domain, or `None` if no route matches.
    pub fn next_hop(&self, domain: &str) -> Option<NextHop> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let mut best: Option<(usize, usize)> = None; // (specificity, index)
        for (i, r) in self.routes.iter().enumerate() {
            for pattern in &r.domains {
                let p = pattern.trim_end_matches('.').to_ascii_lowercase();
                let score = if p == "*" {
                    Some(1)
                } else if let Some(suffix) = p.strip_prefix("*.") {
                    domain
                        .strip_suffix(suffix)
                        .filter(|rest| rest.ends_with('.'))
                        .map(|_| 2 + suffix.len())
                } else if p == domain {
                    Some(usize::MAX)
                } else {
                    None
                };
                if let Some(score) = score
                    && best.is_none_or(|(b, _)| score > b)
                {
                    best = Some((score, i));
                }
            }
        }
        let (_, route) = best?;
        Some(self.hop(route, domain))
    }

    /// The next hop through the route named `name` (a plugin's choice).
    pub fn by_name(&self, name: &str, domain: &str) -> Option<NextHop> {
        let route = self.routes.iter().position(|r| r.name == name)?;
        Some(self.hop(route, domain.trim_end_matches('.').to_ascii_lowercase()))
    }

    fn hop(&self, route: usize, domain: String) -> NextHop {
        let domain = match self.routes[route].kind {
            RouteKind::Mx => domain,
            RouteKind::Smarthost | RouteKind::Lmtp => String::new(),
        };
        NextHop {
            route,
            domain,
            require_tls: false,
        }
    }

    /// A route by index.
    pub fn route(&self, index: usize) -> &Arc<RouteConfig> {
        &self.routes[index]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, domains: &[&str], kind: RouteKind) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            kind,
            hosts: vec!["relay.test".into()],
            ..Default::default()
        }
    }

    #[test]
    fn exact_beats_wildcard_beats_default() {
        let router = Router::new(&[
            route("default", &["*"], RouteKind::Mx),
            route("partner", &["*.partner.test"], RouteKind::Smarthost),
            route("deep", &["*.eu.partner.test"], RouteKind::Smarthost),
            route("one", &["special.partner.test"], RouteKind::Lmtp),
        ]);
        let name = |d: &str| router.route(router.next_hop(d).unwrap().route).name.clone();
        assert_eq!(name("example.org"), "default");
        assert_eq!(name("mx.partner.test"), "partner");
        assert_eq!(name("a.eu.partner.test"), "deep");
        assert_eq!(name("Special.Partner.Test."), "one");
        // `*.partner.test` does not match partner.test itself.
        assert_eq!(name("partner.test"), "default");
        assert_eq!(
            router.next_hop("example.org").unwrap().domain,
            "example.org"
        );
        assert_eq!(router.next_hop("mx.partner.test").unwrap().domain, "");
    }

    #[test]
    fn no_route_no_hop() {
        let router = Router::new(&[route("only", &["example.org"], RouteKind::Mx)]);
        assert!(router.next_hop("other.test").is_none());
    }
}
