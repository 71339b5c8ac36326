//! SSRF guard shared by the sidecar and the API server (webhooks).
//!
//! Rules (SPEC §14.4):
//! * URLs are parsed with the WHATWG algorithm (the `url` crate), which turns decimal, hex, octal and
//!   short IPv4 forms (`2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`) into dotted form. Brackets and one
//!   trailing dot are stripped and names are lowercased. Only `http` and `https` are accepted.
//! * Blocked names: `localhost`, `*.localhost`, `sidecar`, `agent`, `host.docker.internal`,
//!   `metadata.google.internal`.
//! * Blocked IPv4 and IPv6 ranges, with the IPv4 address embedded in IPv4-mapped, IPv4-compatible, NAT64
//!   and 6to4 IPv6 addresses re-checked against the IPv4 list.
//! * DNS pinning: every A and AAAA answer is checked; one blocked answer refuses the host; the connection
//!   goes to the first allowed address (IPv4 preferred) while the URL keeps the host name for SNI,
//!   certificate checks and `Host`.
//! * Exemptions: hosts in the policy's exemption list (`EGRESS_ALLOW_INTERNAL_HOSTS`, exact and
//!   case-insensitive) skip the blocked-name list and the range block. Allowlists still apply.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Re-exported so that other crates can implement [`Resolver`].
pub use async_trait::async_trait;
use url::{Host, Url};

/// Names that are refused whatever they resolve to (plus every `*.localhost`).
pub const BLOCKED_NAMES: &[&str] = &[
    "localhost",
    "sidecar",
    "agent",
    "host.docker.internal",
    "metadata.google.internal",
];

/// Blocked IPv4 ranges as `(network, prefix length)`.
pub const BLOCKED_V4: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 0, 0, 0), 24),
    (Ipv4Addr::new(192, 0, 2, 0), 24),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(198, 18, 0, 0), 15),
    (Ipv4Addr::new(198, 51, 100, 0), 24),
    (Ipv4Addr::new(203, 0, 113, 0), 24),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::new(240, 0, 0, 0), 4),
];

/// Blocked IPv6 ranges as `(network, prefix length)`.
pub const BLOCKED_V6: &[(Ipv6Addr, u8)] = &[
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 128),
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1), 128),
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64),
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32),
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
];

/// Why a destination was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SsrfError {
    /// The URL does not parse or has no host.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// Only `http` and `https` are allowed.
    #[error("unsupported URL scheme `{0}`")]
    UnsupportedScheme(String),
    /// The host name is on the blocked-name list.
    #[error("host `{0}` is not allowed")]
    BlockedName(String),
    /// The host is, or resolves to, a blocked address.
    #[error("host `{host}` resolves to blocked address {addr}")]
    BlockedAddress { host: String, addr: IpAddr },
    /// Resolution failed or returned no address.
    #[error("DNS resolution failed for `{host}`: {reason}")]
    DnsFailure { host: String, reason: String },
}

impl SsrfError {
    /// Machine-readable error code used in sidecar error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            SsrfError::InvalidUrl(_) | SsrfError::UnsupportedScheme(_) => "invalid_url",
            SsrfError::BlockedName(_) | SsrfError::BlockedAddress { .. } => "blocked_address",
            SsrfError::DnsFailure { .. } => "dns_failure",
        }
    }

    /// HTTP status the sidecar answers with: 400, 403 or 502.
    pub fn status(&self) -> u16 {
        match self {
            SsrfError::InvalidUrl(_) | SsrfError::UnsupportedScheme(_) => 400,
            SsrfError::BlockedName(_) | SsrfError::BlockedAddress { .. } => 403,
            SsrfError::DnsFailure { .. } => 502,
        }
    }
}

/// The SSRF policy: the exemption list (`EGRESS_ALLOW_INTERNAL_HOSTS`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    exempt: HashSet<String>,
}

impl Policy {
    /// A policy without exemptions.
    pub fn new() -> Self {
        Self::default()
    }

    /// A policy exempting the given hosts (exact match after normalisation, case-insensitive).
    pub fn with_exemptions<I, S>(hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut policy = Self::new();
        for host in hosts {
            policy.exempt(host.as_ref());
        }
        policy
    }

    /// Parses a comma- or whitespace-separated list such as `EGRESS_ALLOW_INTERNAL_HOSTS`.
    pub fn from_list(list: &str) -> Self {
        Self::with_exemptions(
            list.split(|c: char| c == ',' || c.is_whitespace())
                .filter(|s| !s.is_empty()),
        )
    }

    /// Reads `EGRESS_ALLOW_INTERNAL_HOSTS` from the environment.
    pub fn from_env() -> Self {
        Self::from_list(&std::env::var("EGRESS_ALLOW_INTERNAL_HOSTS").unwrap_or_default())
    }

    /// Adds one exempt host.
    pub fn exempt(&mut self, host: &str) {
        let host = normalize_host(host);
        if !host.is_empty() {
            self.exempt.insert(host);
        }
    }

    /// Whether the (normalised) host is exempt.
    pub fn is_exempt(&self, host: &str) -> bool {
        !self.exempt.is_empty() && self.exempt.contains(&normalize_host(host))
    }

    /// The exempt hosts, normalised.
    pub fn exemptions(&self) -> impl Iterator<Item = &str> {
        self.exempt.iter().map(String::as_str)
    }
}

/// Lowercases a host, strips IPv6 brackets and one trailing dot.
pub fn normalize_host(host: &str) -> String {
    let mut h = host.trim();
    if h.starts_with('[') && h.ends_with(']') && h.len() >= 2 {
        h = &h[1..h.len() - 1];
    }
    let h = h.strip_suffix('.').unwrap_or(h);
    h.to_ascii_lowercase()
}

/// Whether a normalised host name is on the blocked-name list.
pub fn is_blocked_name(host: &str) -> bool {
    let host = normalize_host(host);
    BLOCKED_NAMES.contains(&host.as_str()) || host.ends_with(".localhost")
}

fn v4_in(ip: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    u32::from(ip) & mask == u32::from(net) & mask
}

fn v6_in(ip: Ipv6Addr, net: Ipv6Addr, prefix: u8) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix))
    };
    u128::from(ip) & mask == u128::from(net) & mask
}

/// Whether an IPv4 address is in a blocked range.
pub fn is_blocked_ipv4(ip: Ipv4Addr) -> bool {
    BLOCKED_V4.iter().any(|(net, p)| v4_in(ip, *net, *p))
}

/// NAT64 local-use prefix (RFC 8215). Its operator picks an RFC 6052 prefix length from /48 to /96.
const NAT64_LOCAL_USE: (Ipv6Addr, u8) = (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48);

/// The IPv4 addresses embedded in an IPv6 address, each of which must be allowed:
/// * IPv4-mapped `::ffff:0:0/96`, SIIT IPv4-translated `::ffff:0:0:0/96`, IPv4-compatible `::/96`,
///   NAT64 `64:ff9b::/96` and NAT64 local-use `64:ff9b:1::/48` in its /96 form: the low 32 bits;
/// * 6to4 `2002::/16`: bits 16–47;
/// * Teredo `2001::/32`: the server (bits 32–63) and the client (the low 32 bits, inverted).
pub fn embedded_ipv4s(ip: Ipv6Addr) -> Vec<Ipv4Addr> {
    let bits = u128::from(ip);
    let low32 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    if v6_in(ip, Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96)
        || v6_in(ip, Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0, 0), 96)
        || v6_in(ip, Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 96)
        || v6_in(ip, Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96)
        || v6_in(ip, Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 96)
    {
        return vec![low32];
    }
    if v6_in(ip, Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16) {
        return vec![Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32)];
    }
    if v6_in(ip, Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32) {
        let server = Ipv4Addr::from(((bits >> 64) & 0xffff_ffff) as u32);
        let client = Ipv4Addr::from(!((bits & 0xffff_ffff) as u32));
        return vec![server, client];
    }
    Vec::new()
}

/// The first IPv4 address embedded in an IPv6 address (see [`embedded_ipv4s`]).
pub fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    embedded_ipv4s(ip).into_iter().next()
}

/// Whether an IPv6 address is in a blocked range, or embeds a blocked IPv4 address.
///
/// A NAT64 local-use address that is not in the /96 form (`64:ff9b:1::a.b.c.d`) is blocked: where its
/// IPv4 address sits depends on the operator's prefix length, so it cannot be checked.
pub fn is_blocked_ipv6(ip: Ipv6Addr) -> bool {
    if BLOCKED_V6.iter().any(|(net, p)| v6_in(ip, *net, *p)) {
        return true;
    }
    let (local_use, prefix) = NAT64_LOCAL_USE;
    if v6_in(ip, local_use, prefix) && !v6_in(ip, local_use, 96) {
        return true;
    }
    embedded_ipv4s(ip).into_iter().any(is_blocked_ipv4)
}

/// Whether an address is in a blocked range.
pub fn is_blocked_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_blocked_ipv4(v4),
        IpAddr::V6(v6) => is_blocked_ipv6(v6),
    }
}

/// Parses a URL with the WHATWG algorithm and checks the scheme (`http`/`https`) and the presence of a
/// host. The result is the normalised form used for every later check and for the request itself.
pub fn parse_url(input: &str) -> Result<Url, SsrfError> {
    let url = Url::parse(input.trim()).map_err(|e| SsrfError::InvalidUrl(e.to_string()))?;
    check_scheme(&url)?;
    Ok(url)
}

fn check_scheme(url: &Url) -> Result<(), SsrfError> {
    match url.scheme() {
        "http" | "https" => {}
        other => return Err(SsrfError::UnsupportedScheme(other.to_string())),
    }
    if url.host().is_none() {
        return Err(SsrfError::InvalidUrl("URL has no host".into()));
    }
    Ok(())
}

/// The normalised host of a URL: lowercased, without brackets or trailing dot.
pub fn url_host(url: &Url) -> Option<String> {
    match url.host()? {
        Host::Domain(d) => Some(normalize_host(d)),
        Host::Ipv4(ip) => Some(ip.to_string()),
        Host::Ipv6(ip) => Some(ip.to_string()),
    }
}

/// A parsed host: either an IP literal or a (normalised) name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKind {
    Ip(IpAddr),
    Name(String),
}

/// Classifies a host string (brackets and a trailing dot allowed).
pub fn host_kind(host: &str) -> HostKind {
    let h = normalize_host(host);
    match h.parse::<IpAddr>() {
        Ok(ip) => HostKind::Ip(ip),
        Err(_) => HostKind::Name(h),
    }
}

fn url_host_kind(url: &Url) -> Result<HostKind, SsrfError> {
    match url.host() {
        Some(Host::Domain(d)) => Ok(host_kind(d)),
        Some(Host::Ipv4(ip)) => Ok(HostKind::Ip(IpAddr::V4(ip))),
        Some(Host::Ipv6(ip)) => Ok(HostKind::Ip(IpAddr::V6(ip))),
        None => Err(SsrfError::InvalidUrl("URL has no host".into())),
    }
}

/// Checks a host without DNS: IP literals against the ranges, names against the blocked-name list.
pub fn check_host_literal(host: &str, policy: &Policy) -> Result<(), SsrfError> {
    check_kind_literal(&host_kind(host), policy)
}

fn check_kind_literal(kind: &HostKind, policy: &Policy) -> Result<(), SsrfError> {
    match kind {
        HostKind::Ip(ip) => {
            if !policy.is_exempt(&ip.to_string()) && is_blocked_ip(*ip) {
                return Err(SsrfError::BlockedAddress {
                    host: ip.to_string(),
                    addr: *ip,
                });
            }
        }
        HostKind::Name(name) => {
            if name.is_empty() {
                return Err(SsrfError::InvalidUrl("empty host".into()));
            }
            if !policy.is_exempt(name) && is_blocked_name(name) {
                return Err(SsrfError::BlockedName(name.clone()));
            }
        }
    }
    Ok(())
}

/// Literal check of a URL (no DNS): scheme, host present, blocked names and IP-literal ranges.
/// Used to validate a URL when it is stored (e.g. a webhook at creation, `llm.baseUrl` at configure).
pub fn check_url_literal(url: &Url, policy: &Policy) -> Result<(), SsrfError> {
    check_scheme(url)?;
    check_kind_literal(&url_host_kind(url)?, policy)
}

/// A DNS error reported by a [`Resolver`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ResolveError(pub String);

/// Resolves a host name to all of its A and AAAA addresses. Injectable for tests.
#[async_trait]
pub trait Resolver: Send + Sync {
    /// Every address of `host` (a normalised name, never an IP literal). An empty answer is allowed.
    async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError>;
}

/// A resolver answering from a fixed map; unknown names have no address. Never touches the network.
#[derive(Debug, Clone, Default)]
pub struct StaticResolver {
    map: HashMap<String, Vec<IpAddr>>,
}

impl StaticResolver {
    /// An empty map: every name fails to resolve.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the addresses of a name.
    pub fn with(mut self, host: &str, addrs: &[IpAddr]) -> Self {
        self.insert(host, addrs);
        self
    }

    /// Adds (or replaces) the addresses of a name.
    pub fn insert(&mut self, host: &str, addrs: &[IpAddr]) {
        self.map.insert(normalize_host(host), addrs.to_vec());
    }
}

#[async_trait]
impl Resolver for StaticResolver {
    async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        Ok(self
            .map
            .get(&normalize_host(host))
            .cloned()
            .unwrap_or_default())
    }
}

/// The production resolver: `/etc/hosts` first, then hickory (pure Rust) configured from
/// `/etc/resolv.conf`, asking for both A and AAAA records. Never calls `getaddrinfo`, so it works in a
/// static binary on a scratch image.
#[derive(Clone)]
pub struct HickoryResolver {
    dns: hickory_resolver::TokioResolver,
    hosts: Arc<HashMap<String, Vec<IpAddr>>>,
}

impl std::fmt::Debug for HickoryResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HickoryResolver")
            .field("hosts", &self.hosts.len())
            .finish_non_exhaustive()
    }
}

impl HickoryResolver {
    /// Reads `/etc/resolv.conf` and `/etc/hosts`. Without a readable `/etc/resolv.conf` it still
    /// answers from `/etc/hosts` and fails every other name.
    pub fn from_system_conf() -> Self {
        let resolv = std::fs::read("/etc/resolv.conf").ok();
        let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        Self::from_parts(resolv.as_deref(), &hosts)
    }

    /// Builds the resolver from the text of a `resolv.conf` (or none: no name servers) and of a hosts
    /// file.
    pub fn from_parts(resolv_conf: Option<&[u8]>, hosts: &str) -> Self {
        use hickory_resolver::config::{
            LookupIpStrategy, ResolveHosts, ResolverConfig, ResolverOpts,
        };
        use hickory_resolver::net::runtime::TokioRuntimeProvider;
        let (config, mut opts) = match resolv_conf
            .map(hickory_resolver::system_conf::parse_resolv_conf)
        {
            Some(Ok(parsed)) => parsed,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot parse resolv.conf; only the hosts file will resolve");
                (ResolverConfig::default(), ResolverOpts::default())
            }
            None => {
                tracing::warn!("no resolv.conf; only the hosts file will resolve");
                (ResolverConfig::default(), ResolverOpts::default())
            }
        };
        opts.use_hosts_file = ResolveHosts::Never;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        let mut builder = hickory_resolver::TokioResolver::builder_with_config(
            config,
            TokioRuntimeProvider::default(),
        );
        *builder.options_mut() = opts.clone();
        let dns = match builder.build() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build resolver; only the hosts file will resolve");
                let mut b = hickory_resolver::TokioResolver::builder_with_config(
                    ResolverConfig::default(),
                    TokioRuntimeProvider::default(),
                );
                *b.options_mut() = opts;
                b.build().expect("resolver with an empty configuration")
            }
        };
        Self {
            dns,
            hosts: Arc::new(parse_hosts(hosts)),
        }
    }
}

/// Parses a hosts file: `address name [aliases…]`, `#` comments.
pub fn parse_hosts(text: &str) -> HashMap<String, Vec<IpAddr>> {
    let mut map: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut fields = line.split_whitespace();
        let Some(ip) = fields.next().and_then(|a| a.parse::<IpAddr>().ok()) else {
            continue;
        };
        for name in fields {
            let entry = map.entry(normalize_host(name)).or_default();
            if !entry.contains(&ip) {
                entry.push(ip);
            }
        }
    }
    map
}

#[async_trait]
impl Resolver for HickoryResolver {
    async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        let name = normalize_host(host);
        if let Some(addrs) = self.hosts.get(&name) {
            return Ok(addrs.clone());
        }
        if name.is_empty() {
            return Err(ResolveError("empty host name".into()));
        }
        // A trailing dot makes the name fully qualified: no search-domain queries.
        let fqdn = format!("{name}.");
        match self.dns.lookup_ip(fqdn.as_str()).await {
            Ok(answer) => Ok(answer.iter().collect()),
            Err(e) => Err(ResolveError(e.to_string())),
        }
    }
}

/// The default resolver as a shareable trait object.
pub fn system_resolver() -> Arc<dyn Resolver> {
    Arc::new(HickoryResolver::from_system_conf())
}

/// The outcome of a pinned resolution: connect to `addr`, keep `host` for SNI, certificates and `Host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    /// Normalised host (name or IP literal without brackets).
    pub host: String,
    /// Whether `host` is an IP literal (no DNS was used).
    pub is_ip_literal: bool,
    /// The address to connect to (port from the URL or the scheme default).
    pub addr: SocketAddr,
    /// Every address the resolution returned.
    pub all: Vec<IpAddr>,
}

/// Resolves a host once and pins it. Every A/AAAA answer must be allowed (unless the host is exempt);
/// the chosen address is the first IPv4 answer, else the first IPv6 answer.
pub async fn resolve_host_pinned(
    host: &str,
    port: u16,
    policy: &Policy,
    resolver: &dyn Resolver,
) -> Result<Pinned, SsrfError> {
    let kind = host_kind(host);
    check_kind_literal(&kind, policy)?;
    match kind {
        HostKind::Ip(ip) => Ok(Pinned {
            host: ip.to_string(),
            is_ip_literal: true,
            addr: SocketAddr::new(ip, port),
            all: vec![ip],
        }),
        HostKind::Name(name) => {
            let exempt = policy.is_exempt(&name);
            let addrs = resolver
                .lookup(&name)
                .await
                .map_err(|e| SsrfError::DnsFailure {
                    host: name.clone(),
                    reason: e.0,
                })?;
            if addrs.is_empty() {
                return Err(SsrfError::DnsFailure {
                    host: name,
                    reason: "no A or AAAA records".into(),
                });
            }
            if !exempt {
                if let Some(bad) = addrs.iter().find(|ip| is_blocked_ip(**ip)) {
                    return Err(SsrfError::BlockedAddress {
                        host: name,
                        addr: *bad,
                    });
                }
            }
            let chosen = addrs
                .iter()
                .find(|ip| ip.is_ipv4())
                .or_else(|| addrs.first())
                .copied()
                .expect("non-empty");
            Ok(Pinned {
                host: name,
                is_ip_literal: false,
                addr: SocketAddr::new(chosen, port),
                all: addrs,
            })
        }
    }
}

/// Checks a URL and resolves its host once (see [`resolve_host_pinned`]).
pub async fn resolve_pinned(
    url: &Url,
    policy: &Policy,
    resolver: &dyn Resolver,
) -> Result<Pinned, SsrfError> {
    check_scheme(url)?;
    let port = url
        .port_or_known_default()
        .ok_or_else(|| SsrfError::InvalidUrl("URL has no port".into()))?;
    let host = match url_host_kind(url)? {
        HostKind::Ip(ip) => ip.to_string(),
        HostKind::Name(n) => n,
    };
    resolve_host_pinned(&host, port, policy, resolver).await
}

/// A `reqwest` DNS resolver that refuses every name: clients built here only ever connect to pinned
/// addresses, so `getaddrinfo` is never reached.
struct NoDns;

impl reqwest::dns::Resolve for NoDns {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let name = name.as_str().to_string();
        Box::pin(async move {
            Err(format!("unpinned DNS lookup refused for {name}").into())
                as Result<reqwest::dns::Addrs, _>
        })
    }
}

/// A `reqwest` client builder that connects to the pinned address for `pinned.host`, with redirects
/// disabled, no environment proxy and no DNS of its own. The URL keeps its host, so TLS SNI, the
/// certificate check and the `Host` header use the name.
pub fn pinned_client_builder(pinned: &Pinned) -> reqwest::ClientBuilder {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(NoDns))
        .connect_timeout(Duration::from_secs(10));
    if !pinned.is_ip_literal {
        builder = builder.resolve(&pinned.host, pinned.addr);
    }
    builder
}

/// Builds the pinned client of [`pinned_client_builder`].
pub fn pinned_client(pinned: &Pinned) -> Result<reqwest::Client, reqwest::Error> {
    pinned_client_builder(pinned).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn literal(u: &str) -> Result<(), SsrfError> {
        check_url_literal(&parse_url(u)?, &Policy::new())
    }

    #[test]
    fn whatwg_normalises_ipv4_forms() {
        for u in [
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://127.0.0.1./",
        ] {
            let url = parse_url(u).unwrap();
            assert_eq!(url_host(&url).as_deref(), Some("127.0.0.1"), "{u}");
            assert_eq!(literal(u).unwrap_err().code(), "blocked_address", "{u}");
        }
    }

    #[test]
    fn blocked_literals() {
        for u in [
            "http://169.254.169.254/latest/meta-data",
            "http://10.0.0.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[::127.0.0.1]/",
            "http://[64:ff9b::a00:1]/",
            "http://[2002:a9fe:a9fe::]/",
            // SIIT IPv4-translated, NAT64 local-use and Teredo (server or client) forms.
            "http://[::ffff:0:127.0.0.1]/",
            "http://[::ffff:0:a9fe:a9fe]/",
            "http://[64:ff9b:1::10.0.0.1]/",
            "http://[64:ff9b:1::a9fe:a9fe]/",
            "http://[64:ff9b:1:ff::808:808]/",
            "http://[2001:0:7f00:1::]/",
            "http://[2001:0:5db8:d822::f5ff:fffe]/",
            "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",
            "http://[fe80::1]/",
            "http://[fd00::1]/",
            "http://[::]/",
            "http://0.0.0.0/",
            "http://100.64.1.1/",
            "http://172.31.255.255/",
            "http://192.168.1.1/",
            "http://198.19.0.1/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
            "http://localhost/",
            "http://LOCALHOST./",
            "http://api.localhost/",
            "http://sidecar:8080/",
            "http://agent/",
            "http://host.docker.internal/",
            "http://metadata.google.internal/computeMetadata/v1/",
        ] {
            let err = literal(u).unwrap_err();
            assert_eq!(err.code(), "blocked_address", "{u}");
            assert_eq!(err.status(), 403, "{u}");
        }
    }

    #[test]
    fn allowed_literals() {
        for u in [
            "https://api.github.com/user",
            "http://93.184.216.34/",
            "http://172.32.0.1/",
            "http://[2606:4700::1111]/",
            "http://[2002:5db8:d822::]/",
            "http://[::ffff:0:5db8:d822]/",
            "http://[64:ff9b:1::5db8:d822]/",
            "http://[2001:0:5db8:d822::a247:27dd]/",
            "https://localhost.example.com/",
        ] {
            literal(u).unwrap_or_else(|e| panic!("{u}: {e}"));
        }
    }

    #[test]
    fn schemes_and_garbage() {
        assert_eq!(
            parse_url("file:///etc/passwd").unwrap_err().code(),
            "invalid_url"
        );
        assert_eq!(parse_url("gopher://x/").unwrap_err().code(), "invalid_url");
        assert_eq!(parse_url("not a url").unwrap_err().code(), "invalid_url");
        assert_eq!(parse_url("http://").unwrap_err().code(), "invalid_url");
    }

    #[test]
    fn exemptions_skip_names_and_ranges() {
        let policy = Policy::from_list("127.0.0.1, Host.Docker.Internal. [::1]");
        for u in [
            "http://127.0.0.1:9/",
            "http://2130706433/",
            "http://host.docker.internal:3000/",
            "http://[::1]:80/",
        ] {
            check_url_literal(&parse_url(u).unwrap(), &policy)
                .unwrap_or_else(|e| panic!("{u}: {e}"));
        }
        assert!(check_url_literal(&parse_url("http://127.0.0.2/").unwrap(), &policy).is_err());
        assert!(check_url_literal(&parse_url("http://localhost/").unwrap(), &policy).is_err());
    }

    #[tokio::test]
    async fn pinning() {
        let r = StaticResolver::new()
            .with("internal.test", &["10.0.0.5".parse().unwrap()])
            .with(
                "mixed.test",
                &[
                    "93.184.216.34".parse().unwrap(),
                    "10.0.0.5".parse().unwrap(),
                ],
            )
            .with(
                "public.test",
                &[
                    "2606:4700::1111".parse().unwrap(),
                    "93.184.216.34".parse().unwrap(),
                ],
            )
            .with("v6.test", &["2606:4700::1111".parse().unwrap()])
            .with("mapped.test", &["::ffff:169.254.169.254".parse().unwrap()]);
        let p = Policy::new();
        let pin = |u: &str| {
            let url = parse_url(u).unwrap();
            let r = r.clone();
            let p = p.clone();
            async move { resolve_pinned(&url, &p, &r).await }
        };
        assert_eq!(
            pin("http://internal.test/").await.unwrap_err().code(),
            "blocked_address"
        );
        assert_eq!(
            pin("http://mixed.test/").await.unwrap_err().code(),
            "blocked_address"
        );
        assert_eq!(
            pin("http://mapped.test/").await.unwrap_err().code(),
            "blocked_address"
        );
        let err = pin("http://unknown.test/").await.unwrap_err();
        assert_eq!((err.code(), err.status()), ("dns_failure", 502));
        let ok = pin("https://PUBLIC.test./x").await.unwrap();
        assert_eq!(ok.addr, "93.184.216.34:443".parse().unwrap());
        assert_eq!(ok.host, "public.test");
        let ok = pin("http://v6.test:8080/").await.unwrap();
        assert_eq!(ok.addr, "[2606:4700::1111]:8080".parse().unwrap());
        let ok = pin("http://93.184.216.34/").await.unwrap();
        assert!(ok.is_ip_literal);

        // An exempt name may resolve to a private address.
        let exempt = Policy::from_list("internal.test");
        let url = parse_url("http://internal.test:81/").unwrap();
        let ok = resolve_pinned(&url, &exempt, &r).await.unwrap();
        assert_eq!(ok.addr, "10.0.0.5:81".parse().unwrap());
    }

    #[tokio::test]
    async fn hickory_resolver_answers_from_the_hosts_file() {
        // No name server at all: only the hosts file answers, nothing leaves the machine.
        let hosts = "# comment\n127.0.0.9 foo.test Foo-Alias.test # trailing\n::1 foo.test\n\nbad line\n172.17.0.1 host.docker.internal\n";
        let r = HickoryResolver::from_parts(None, hosts);
        let mut got = r.lookup("FOO.test.").await.unwrap();
        got.sort();
        assert_eq!(
            got,
            vec![
                "127.0.0.9".parse::<IpAddr>().unwrap(),
                "::1".parse::<IpAddr>().unwrap()
            ]
        );
        assert_eq!(r.lookup("foo-alias.test").await.unwrap().len(), 1);
        assert!(r
            .lookup("absent.test")
            .await
            .map(|v| v.is_empty())
            .unwrap_or(true));
        // Through the pinning rules: blocked unless exempt; exempting the name works.
        let url = parse_url("http://host.docker.internal:3000/").unwrap();
        assert!(resolve_pinned(&url, &Policy::new(), &r).await.is_err());
        let pinned = resolve_pinned(&url, &Policy::from_list("host.docker.internal"), &r)
            .await
            .unwrap();
        assert_eq!(pinned.addr, "172.17.0.1:3000".parse().unwrap());
    }

    #[test]
    fn embedded_forms() {
        assert_eq!(
            embedded_ipv4("2002:7f00:1::".parse().unwrap()),
            Some(Ipv4Addr::new(127, 0, 0, 1))
        );
        assert_eq!(
            embedded_ipv4("64:ff9b::7f00:1".parse().unwrap()),
            Some(Ipv4Addr::new(127, 0, 0, 1))
        );
        assert_eq!(
            embedded_ipv4s("::ffff:0:a00:1".parse().unwrap()),
            vec![Ipv4Addr::new(10, 0, 0, 1)]
        );
        assert_eq!(
            embedded_ipv4s("64:ff9b:1::a9fe:a9fe".parse().unwrap()),
            vec![Ipv4Addr::new(169, 254, 169, 254)]
        );
        // Teredo: server 65.54.227.120, client 192.0.2.45 (stored inverted).
        assert_eq!(
            embedded_ipv4s("2001:0:4136:e378:8000:63bf:3fff:fdd2".parse().unwrap()),
            vec![
                Ipv4Addr::new(65, 54, 227, 120),
                Ipv4Addr::new(192, 0, 2, 45)
            ]
        );
        assert_eq!(embedded_ipv4("2606:4700::1".parse().unwrap()), None);
    }
}
