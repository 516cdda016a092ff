//! The label sets of the daemon's metrics.

use prometheus_client::encoding::EncodeLabelSet;

/// `media` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MediaLabel {
    /// `audio` / `video`.
    pub media: String,
}

/// `crypto` label: `srtp` or `rtp`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CryptoLabel {
    /// `srtp` or `rtp`.
    pub crypto: String,
}

/// `model` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    /// `name@version`.
    pub model: String,
}

/// `model` and `reason` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabel {
    /// `name@version`.
    pub model: String,
    /// Why the chunk was dropped.
    pub reason: String,
}

/// `policy` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    /// `emotions`, `expressions`, `aggregate`.
    pub policy: String,
}

/// `reason` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why.
    pub reason: String,
}

/// `mode` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabel {
    /// `opt-out`, `opt-in`.
    pub mode: String,
}

/// `change` and `source` labels of consent changes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsentLabel {
    /// `granted` or `withdrawn`.
    pub change: String,
    /// `tag` or `control`.
    pub source: String,
}

/// Labels of the scaling gauges: the model as elsewhere (`fer@1`), and its name and version apart
/// (Kubernetes label selectors, as an HPA's external metric uses, cannot hold `@`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScalingLabel {
    /// `name@version`.
    pub model: String,
    /// Model name.
    pub name: String,
    /// Model version.
    pub version: String,
}

impl ScalingLabel {
    /// From `name@version`.
    pub fn of(model: &str) -> Self {
        let (name, version) = model.split_once('@').unwrap_or((model, ""));
        ScalingLabel {
            model: model.to_owned(),
            name: name.to_owned(),
            version: version.to_owned(),
        }
    }
}

/// `kms` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KmsLabel {
    /// The KMS's configured name.
    pub kms: String,
}

/// `outcome` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// What happened.
    pub outcome: String,
}

/// `op` and `outcome` labels (OpenVidu REST requests).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpOutcomeLabel {
    /// `sessions` or `signal`.
    pub op: String,
    /// What happened.
    pub outcome: String,
}
