//! Prerequisites (SPEC R18): `feature require`, `feature unrequire` and `feature list`.

use super::args::FeatureCommand;
use super::failure::{exit, Failure};
use super::output::Output;
use super::values;
use crate::Client;

/// A feature command, checked and ready to send.
pub enum Action {
    Require { feature: String, requires: String },
    Unrequire { feature: String, requires: String },
    List,
}

impl Action {
    pub fn new(command: FeatureCommand) -> Result<Self, Failure> {
        Ok(match command {
            FeatureCommand::Require {
                feature,
                prerequisite,
            } => Action::Require {
                feature: values::feature(feature)?,
                requires: values::feature(prerequisite)?,
            },
            FeatureCommand::Unrequire {
                feature,
                prerequisite,
            } => Action::Unrequire {
                feature: values::feature(feature)?,
                requires: values::feature(prerequisite)?,
            },
            FeatureCommand::List => Action::List,
        })
    }

    pub async fn run(self, client: &Client, out: &Output) -> Result<u8, Failure> {
        let list = match self {
            Action::Require { feature, requires } => {
                client.require_feature(&feature, &requires).await?
            }
            Action::Unrequire { feature, requires } => {
                client.unrequire_feature(&feature, &requires).await?
            }
            Action::List => client.feature_requirements().await?,
        };
        out.features(&list);
        Ok(exit::OK)
    }
}
