//! Groups and policy rules (SPEC §8, R16): the messages that change and read them, and the
//! forms both sides check: group names, members (`user:EMAIL`, `host:GLOB`, `ip:CIDR`) and
//! how a member matches a holder.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::message::{FeatureStatus, LeaseInfo};
use crate::names::validate_username;

/// The longest group name, like a feature key.
pub const GROUP_MAX_LEN: usize = 64;

/// The most members one group may have.
pub const MAX_GROUP_MEMBERS: usize = 1000;

/// The longest host pattern of a `host:` member (a host name is at most 255 bytes).
pub const HOST_PATTERN_MAX_LEN: usize = 255;

/// Creates a group with its first members (admins); answered with `Response::Group`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupAdd {
    pub name: String,
    /// Members as people type them: `user:EMAIL`, `host:GLOB` or `ip:CIDR`.
    pub members: Vec<String>,
}

/// Adds members to a group or removes them (admins); answered with `Response::Group`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMembers {
    pub name: String,
    /// `true` adds the members, `false` removes them.
    pub add: bool,
    pub members: Vec<String>,
}

/// A group by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRef {
    pub name: String,
}

/// A group and its members, in the form people type them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    pub name: String,
    pub members: Vec<String>,
}

/// The kinds of rule of SPEC §8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RuleKind {
    /// Once a feature has any, only members of its include groups may use it.
    Include,
    /// Members may not use the feature; wins over include.
    Exclude,
    /// `seats` floating seats kept for members of the group.
    Reserve,
    /// Members hold at most `seats` seats of the feature together (or each, with `each`).
    Max,
    /// Members may not borrow the feature.
    BorrowExclude,
    /// `seats` floating seats of the feature can never be borrowed (no group).
    BorrowLowwater,
    /// In the feature's queue, members go before others; lower `seats` first.
    Priority,
}

impl RuleKind {
    /// Every kind, in wire order.
    pub const ALL: [RuleKind; 7] = [
        Self::Include,
        Self::Exclude,
        Self::Reserve,
        Self::Max,
        Self::BorrowExclude,
        Self::BorrowLowwater,
        Self::Priority,
    ];

    /// The kind as the CLI and SPEC spell it, e.g. `borrow-lowwater`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Include => "include",
            Self::Exclude => "exclude",
            Self::Reserve => "reserve",
            Self::Max => "max",
            Self::BorrowExclude => "borrow-exclude",
            Self::BorrowLowwater => "borrow-lowwater",
            Self::Priority => "priority",
        }
    }

    /// The kind of a word, if it is one.
    pub fn parse(word: &str) -> Option<RuleKind> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == word)
    }

    /// Whether the rule takes a number (`reserve N`, `max N`, `borrow-lowwater N`,
    /// `priority N`).
    pub fn takes_number(self) -> bool {
        matches!(
            self,
            Self::Reserve | Self::Max | Self::BorrowLowwater | Self::Priority
        )
    }

    /// Whether the rule names a group (all but `borrow-lowwater`).
    pub fn takes_group(self) -> bool {
        self != Self::BorrowLowwater
    }
}

impl fmt::Display for RuleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rule as an admin states it, before it has an id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSpec {
    pub feature: String,
    pub kind: RuleKind,
    /// The number of `reserve`, `max`, `borrow-lowwater` and `priority`; 0 for the others.
    pub seats: u32,
    /// The group, for every kind but `borrow-lowwater`.
    pub group: Option<String>,
    /// For `max`: the limit holds for each member rather than for the group together.
    pub each: bool,
}

impl RuleSpec {
    /// Checks that the number, group and `each` fit the kind, explaining what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let kind = self.kind;
        match (&self.group, kind.takes_group()) {
            (None, true) => return Err(format!("a {kind} rule names a group")),
            (Some(group), false) => {
                return Err(format!(
                    "a {kind} rule names no group (it counts all seats), not {group:?}"
                ))
            }
            (Some(group), true) => validate_group(group)?,
            (None, false) => {}
        }
        if kind.takes_number() {
            if kind != RuleKind::Priority && self.seats == 0 {
                return Err(format!("the number of a {kind} rule must be at least 1"));
            }
            crate::validate_seats("the number of a rule", self.seats.max(1))?;
        } else if self.seats != 0 {
            return Err(format!("a {kind} rule takes no number"));
        }
        if self.each && kind != RuleKind::Max {
            return Err(format!("--each belongs to max rules, not to {kind}"));
        }
        Ok(())
    }

    /// The rule as people write it after the feature, e.g. `max 2 juniors --each`.
    pub fn text(&self) -> String {
        let mut text = self.kind.as_str().to_string();
        if self.kind.takes_number() {
            text.push_str(&format!(" {}", self.seats));
        }
        if let Some(group) = &self.group {
            text.push(' ');
            text.push_str(group);
        }
        if self.each {
            text.push_str(" --each");
        }
        text
    }
}

/// Adds a rule to a feature (admins), or with `dry_run` only says what it would do;
/// answered with `Response::RuleAdded`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyAdd {
    pub rule: RuleSpec,
    pub dry_run: bool,
}

/// A stored rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleInfo {
    /// `None` for the rule of a dry run, which is not stored.
    pub id: Option<u64>,
    pub rule: RuleSpec,
}

/// What a rule does to the holders of now: the leases it puts over its limit (they are not
/// ended: the rule applies to new checkouts) and the active users it would refuse.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RuleEffect {
    pub leases_over: Vec<LeaseInfo>,
    pub users_denied: Vec<String>,
}

/// The answer to `PolicyAdd`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleAdded {
    pub rule: RuleInfo,
    pub effect: RuleEffect,
}

/// The rules of one feature, or of every feature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyQuery {
    pub feature: Option<String>,
}

/// A rule by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRef {
    pub id: u64,
}

/// Asks how the rules of a feature decide for one holder (admins); nothing is taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyCheck {
    pub feature: String,
    pub user: String,
    pub host: Option<String>,
    pub ip: Option<String>,
}

/// The answer to `PolicyCheck`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDecision {
    pub allowed: bool,
    /// The rule that decides, when one does.
    pub rule: Option<u64>,
    pub reason: String,
}

/// A feature's status figures with the seats its `reserve` rules keep and nobody of their
/// group uses (the answer to `Request::Figures`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureFigures {
    pub status: FeatureStatus,
    pub reserved: u32,
}

/// Checks a group name against `[a-z0-9][a-z0-9._-]{0,63}`, explaining what is wrong.
pub fn validate_group(name: &str) -> Result<(), String> {
    crate::validate_feature(name).map_err(|err| err.replacen("feature name", "group name", 1))
}

/// A member of a group, parsed: who it takes in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Member {
    /// A user by username (kept in lowercase).
    User(String),
    /// Hosts whose name (as the client reports it) matches, case-insensitively; `*` any
    /// run of characters, `?` any one.
    Host(String),
    /// Clients connecting from an address in the network (as the server sees it).
    Ip { network: IpAddr, prefix: u8 },
}

impl Member {
    /// Whether the member takes in a holder: a user, on a host, from an address.
    pub fn matches(&self, user: &str, host: &str, address: Option<IpAddr>) -> bool {
        match self {
            Member::User(name) => name.eq_ignore_ascii_case(user),
            Member::Host(pattern) => glob_matches(pattern.as_bytes(), host.as_bytes()),
            Member::Ip { network, prefix } => {
                address.is_some_and(|address| in_network(address, *network, *prefix))
            }
        }
    }
}

impl FromStr for Member {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let Some((kind, value)) = text.split_once(':') else {
            return Err(format!(
                "member {text:?} is not user:EMAIL, host:GLOB or ip:CIDR"
            ));
        };
        match kind {
            "user" => {
                validate_username(value).map_err(|err| format!("member {text:?}: {err}"))?;
                Ok(Member::User(value.to_lowercase()))
            }
            "host" => {
                if value.is_empty() {
                    return Err(format!("member {text:?} names no host"));
                }
                if value.len() > HOST_PATTERN_MAX_LEN {
                    return Err(format!(
                        "member {text:?}: a host pattern is at most {HOST_PATTERN_MAX_LEN} characters"
                    ));
                }
                if let Some(bad) = value
                    .chars()
                    .find(|c| c.is_whitespace() || c.is_control() || !c.is_ascii())
                {
                    return Err(format!(
                        "member {text:?}: a host pattern cannot hold {bad:?}"
                    ));
                }
                Ok(Member::Host(value.to_ascii_lowercase()))
            }
            "ip" => parse_network(value)
                .map(|(network, prefix)| Member::Ip { network, prefix })
                .map_err(|err| format!("member {text:?}: {err}")),
            _ => Err(format!(
                "member {text:?} starts with {kind:?}; members are user:EMAIL, host:GLOB or ip:CIDR"
            )),
        }
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Member::User(name) => write!(f, "user:{name}"),
            Member::Host(pattern) => write!(f, "host:{pattern}"),
            Member::Ip { network, prefix } => write!(f, "ip:{network}/{prefix}"),
        }
    }
}

/// `10.1.0.0/16`, `fd00::/8`, or one address (a /32 or /128); the network is kept with its
/// host bits cleared.
fn parse_network(text: &str) -> Result<(IpAddr, u8), String> {
    let (address, prefix) = match text.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (text, None),
    };
    let address: IpAddr = address
        .parse()
        .map_err(|_| format!("{address:?} is not an IP address"))?;
    let address = address.to_canonical();
    let bits = if address.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => bits,
        Some(prefix) => match prefix.parse::<u8>() {
            Ok(prefix) if prefix <= bits => prefix,
            _ => {
                return Err(format!(
                    "the prefix length {prefix:?} must be a number from 0 to {bits}"
                ))
            }
        },
    };
    Ok((masked(address, prefix), prefix))
}

fn masked(address: IpAddr, prefix: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

fn in_network(address: IpAddr, network: IpAddr, prefix: u8) -> bool {
    let address = address.to_canonical();
    address.is_ipv4() == network.is_ipv4() && masked(address, prefix) == network
}

/// `*` matches any run of characters, `?` any one; ASCII case is ignored. Iterative, with
/// one backtrack point, so that no pattern takes more than O(pattern × text).
fn glob_matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p].eq_ignore_ascii_case(&text[t])) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(text: &str) -> Member {
        text.parse().unwrap()
    }

    #[test]
    fn members_parse_and_print_as_typed() {
        assert_eq!(member("user:Ana@Studio").to_string(), "user:ana@studio");
        assert_eq!(member("host:Render-*").to_string(), "host:render-*");
        assert_eq!(member("ip:10.1.2.3/16").to_string(), "ip:10.1.0.0/16");
        assert_eq!(member("ip:10.1.2.3").to_string(), "ip:10.1.2.3/32");
        assert_eq!(member("ip:fd00::1/8").to_string(), "ip:fd00::/8");
        assert_eq!(member("ip:::ffff:10.0.0.1").to_string(), "ip:10.0.0.1/32");
        for (bad, says) in [
            ("ana@studio", "is not user:EMAIL"),
            ("group:x", "starts with \"group\""),
            ("user:ana", "not an e-mail address"),
            ("host:", "names no host"),
            ("host:a b", "cannot hold ' '"),
            ("ip:10.0.0.300", "is not an IP address"),
            ("ip:10.0.0.0/33", "from 0 to 32"),
            ("ip:fd00::/129", "from 0 to 128"),
        ] {
            let err = bad.parse::<Member>().unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn members_match_users_hosts_and_networks() {
        let v4: IpAddr = "10.1.200.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.1.200.7".parse().unwrap();
        assert!(member("user:ana@studio").matches("ANA@studio", "h", None));
        assert!(!member("user:ana@studio").matches("bo@studio", "h", None));
        assert!(member("host:render-??").matches("u", "RENDER-07", None));
        assert!(!member("host:render-??").matches("u", "render-107", None));
        assert!(member("host:*.farm.*").matches("u", "n1.farm.studio", None));
        assert!(member("host:*").matches("u", "", None));
        assert!(member("ip:10.1.0.0/16").matches("u", "h", Some(v4)));
        assert!(member("ip:10.1.0.0/16").matches("u", "h", Some(mapped)));
        assert!(!member("ip:10.2.0.0/16").matches("u", "h", Some(v4)));
        assert!(member("ip:0.0.0.0/0").matches("u", "h", Some(v4)));
        assert!(!member("ip:::/0").matches("u", "h", Some(v4)));
        assert!(!member("ip:10.1.0.0/16").matches("u", "h", None));
    }

    #[test]
    fn a_glob_of_many_stars_is_not_exponential() {
        let pattern = "*a".repeat(100) + "b";
        let text = "a".repeat(255);
        let start = std::time::Instant::now();
        assert!(!glob_matches(pattern.as_bytes(), text.as_bytes()));
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn rules_check_their_number_group_and_each() {
        let rule = |kind, seats, group: Option<&str>, each| RuleSpec {
            feature: "nuke".into(),
            kind,
            seats,
            group: group.map(str::to_string),
            each,
        };
        assert!(rule(RuleKind::Max, 2, Some("juniors"), true)
            .validate()
            .is_ok());
        assert_eq!(
            rule(RuleKind::Max, 2, Some("juniors"), true).text(),
            "max 2 juniors --each"
        );
        assert!(rule(RuleKind::BorrowLowwater, 2, None, false)
            .validate()
            .is_ok());
        assert!(rule(RuleKind::Priority, 0, Some("leads"), false)
            .validate()
            .is_ok());
        for (bad, says) in [
            (rule(RuleKind::Include, 0, None, false), "names a group"),
            (
                rule(RuleKind::BorrowLowwater, 1, Some("a"), false),
                "names no group",
            ),
            (rule(RuleKind::Max, 0, Some("a"), false), "at least 1"),
            (
                rule(RuleKind::Include, 3, Some("a"), false),
                "takes no number",
            ),
            (
                rule(RuleKind::Reserve, 1, Some("a"), true),
                "--each belongs",
            ),
            (rule(RuleKind::Include, 0, Some("A"), false), "group name"),
        ] {
            let err = bad.validate().unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }
}
