//! Groups and policy rules (SPEC §8, R16): `group add|member|list|remove` and
//! `policy add|list|remove|check`.

use tally_protocol::{validate_group, Member, PolicyCheck, RuleKind, RuleSpec};

use super::args::{GroupCommand, GroupMemberCommand, PolicyCommand};
use super::failure::{exit, Failure};
use super::output::Output;
use super::values;
use crate::Client;

/// A group or policy command, checked and ready to send.
pub enum Action {
    GroupAdd {
        name: String,
        members: Vec<String>,
    },
    GroupMembers {
        name: String,
        add: bool,
        members: Vec<String>,
    },
    GroupList,
    GroupRemove {
        name: String,
    },
    PolicyAdd {
        rule: RuleSpec,
        dry_run: bool,
    },
    PolicyList {
        feature: Option<String>,
    },
    PolicyRemove {
        id: u64,
    },
    PolicyCheck(PolicyCheck),
}

impl Action {
    pub fn group(command: GroupCommand) -> Result<Self, Failure> {
        Ok(match command {
            GroupCommand::Add { name, members } => Action::GroupAdd {
                name: group_name(name)?,
                members: checked_members(members)?,
            },
            GroupCommand::Member(GroupMemberCommand::Add { name, members }) => {
                Action::GroupMembers {
                    name: group_name(name)?,
                    add: true,
                    members: checked_members(members)?,
                }
            }
            GroupCommand::Member(GroupMemberCommand::Remove { name, members }) => {
                Action::GroupMembers {
                    name: group_name(name)?,
                    add: false,
                    members: checked_members(members)?,
                }
            }
            GroupCommand::List => Action::GroupList,
            GroupCommand::Remove { name } => Action::GroupRemove {
                name: group_name(name)?,
            },
        })
    }

    pub fn policy(command: PolicyCommand) -> Result<Self, Failure> {
        Ok(match command {
            PolicyCommand::Add {
                feature,
                rule,
                each,
                dry_run,
            } => Action::PolicyAdd {
                rule: rule_spec(values::feature(feature)?, &rule, each)?,
                dry_run,
            },
            PolicyCommand::List { feature } => Action::PolicyList {
                feature: values::feature_opt(feature)?,
            },
            PolicyCommand::Remove { id } => Action::PolicyRemove { id },
            PolicyCommand::Check {
                feature,
                user,
                host,
                ip,
            } => {
                if let Some(ip) = &ip {
                    ip.parse::<std::net::IpAddr>()
                        .map_err(|_| Failure::usage(format!("--ip {ip:?} is not an IP address")))?;
                }
                Action::PolicyCheck(PolicyCheck {
                    feature: values::feature(feature)?,
                    user: values::username(user)?,
                    host,
                    ip,
                })
            }
        })
    }

    pub async fn run(self, client: &Client, out: &Output) -> Result<u8, Failure> {
        match self {
            Action::GroupAdd { name, members } => {
                out.group(&client.add_group(&name, &members).await?);
            }
            Action::GroupMembers { name, add, members } => {
                out.group(&client.change_group_members(&name, add, &members).await?);
            }
            Action::GroupList => out.groups(&client.groups().await?),
            Action::GroupRemove { name } => out.group_removed(&client.remove_group(&name).await?),
            Action::PolicyAdd { rule, dry_run } => {
                out.rule_added(&client.add_rule(rule, dry_run).await?, dry_run);
            }
            Action::PolicyList { feature } => out.rules(&client.rules(feature.as_deref()).await?),
            Action::PolicyRemove { id } => out.rule_removed(client.remove_rule(id).await?),
            Action::PolicyCheck(check) => {
                let decision = client.check_policy(check).await?;
                out.decision(&decision);
                return Ok(if decision.allowed {
                    exit::OK
                } else {
                    exit::FAILED
                });
            }
        }
        Ok(exit::OK)
    }
}

fn group_name(name: String) -> Result<String, Failure> {
    validate_group(&name).map_err(Failure::usage)?;
    Ok(name)
}

/// Members checked here as the server checks them, so that a typo is a usage error.
fn checked_members(members: Vec<String>) -> Result<Vec<String>, Failure> {
    for member in &members {
        member.parse::<Member>().map_err(Failure::usage)?;
    }
    Ok(members)
}

/// `max 2 juniors` (with `--each`) as a rule of `feature`.
fn rule_spec(feature: String, words: &[String], each: bool) -> Result<RuleSpec, Failure> {
    const FORMS: &str = "include GROUP, exclude GROUP, reserve N GROUP, max N GROUP [--each], borrow-exclude GROUP, borrow-lowwater N or priority N GROUP";
    let mut words = words.iter();
    let first = words.next().map(String::as_str).unwrap_or_default();
    let kind = RuleKind::parse(first)
        .ok_or_else(|| Failure::usage(format!("{first:?} is not a rule; rules are {FORMS}")))?;
    let seats = if kind.takes_number() {
        let Some(number) = words.next() else {
            return Err(Failure::usage(format!(
                "a {kind} rule needs a number: {FORMS}"
            )));
        };
        number.parse::<u32>().map_err(|_| {
            Failure::usage(format!(
                "{number:?} is not a number; a {kind} rule needs one"
            ))
        })?
    } else {
        0
    };
    let group = if kind.takes_group() {
        let Some(group) = words.next() else {
            return Err(Failure::usage(format!(
                "a {kind} rule needs a group: {FORMS}"
            )));
        };
        Some(group.clone())
    } else {
        None
    };
    if let Some(extra) = words.next() {
        return Err(Failure::usage(format!(
            "{extra:?} does not belong in a {kind} rule: {FORMS}"
        )));
    }
    let rule = RuleSpec {
        feature,
        kind,
        seats,
        group,
        each,
    };
    rule.validate().map_err(Failure::usage)?;
    Ok(rule)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        text.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn rules_read_as_written() {
        let rule = rule_spec("nuke".into(), &words("max 2 juniors"), true).unwrap();
        assert_eq!(rule.text(), "max 2 juniors --each");
        let rule = rule_spec("nuke".into(), &words("borrow-lowwater 3"), false).unwrap();
        assert_eq!(
            (rule.kind, rule.seats, rule.group),
            (RuleKind::BorrowLowwater, 3, None)
        );
        for (bad, says) in [
            ("maximum 2 juniors", "is not a rule"),
            ("max juniors", "is not a number"),
            ("max 2", "needs a group"),
            ("include juniors extra", "does not belong"),
            ("include Juniors", "group name"),
            ("reserve 0 juniors", "at least 1"),
        ] {
            let err = rule_spec("nuke".into(), &words(bad), false).unwrap_err();
            assert!(err.message.contains(says), "{bad}: {}", err.message);
        }
        let err = rule_spec("nuke".into(), &words("include juniors"), true).unwrap_err();
        assert!(err.message.contains("--each"), "{}", err.message);
    }
}
