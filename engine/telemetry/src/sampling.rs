//! The sampling decision, configured by OpenTelemetry's standard variables
//! (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`, `OTEL_SDK_DISABLED`).
//!
//! Only the process that starts a trace decides (the CLI, or engined for a client that sent no
//! `traceparent`); everything under it follows the sampled flag of the context it was given, so a
//! trace is recorded whole or not at all.

use std::sync::OnceLock;

use crate::context::TraceId;

/// A sampler as `OTEL_TRACES_SAMPLER` names it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    /// Samples this fraction of new traces, by trace id.
    TraceIdRatio(f64),
    /// Follows a remote parent's sampled flag; roots are decided by the inner sampler.
    ParentBased(Root),
}

/// The root decision of a parent-based sampler.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Root {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
}

/// Why a sampler setting was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SamplerError {
    #[error("unknown OTEL_TRACES_SAMPLER {0:?} (want always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio)")]
    Unknown(String),
    #[error("OTEL_TRACES_SAMPLER_ARG {0:?} is not a ratio between 0 and 1")]
    Ratio(String),
}

impl Sampler {
    /// Parses a sampler name and its argument (the ratio, default 1.0).
    pub fn parse(name: &str, arg: Option<&str>) -> Result<Sampler, SamplerError> {
        let ratio = || -> Result<f64, SamplerError> {
            match arg.map(str::trim).filter(|a| !a.is_empty()) {
                None => Ok(1.0),
                Some(a) => a
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| SamplerError::Ratio(a.into())),
            }
        };
        Ok(match name.trim() {
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => Sampler::TraceIdRatio(ratio()?),
            "" | "parentbased_always_on" => Sampler::ParentBased(Root::AlwaysOn),
            "parentbased_always_off" => Sampler::ParentBased(Root::AlwaysOff),
            "parentbased_traceidratio" => Sampler::ParentBased(Root::TraceIdRatio(ratio()?)),
            other => return Err(SamplerError::Unknown(other.into())),
        })
    }

    /// The sampler the environment configures. `OTEL_SDK_DISABLED=true` turns recording off.
    pub fn from_env() -> Result<Sampler, SamplerError> {
        if std::env::var("OTEL_SDK_DISABLED").map(|v| v.trim().eq_ignore_ascii_case("true")).unwrap_or(false) {
            return Ok(Sampler::AlwaysOff);
        }
        let name = std::env::var("OTEL_TRACES_SAMPLER").unwrap_or_default();
        let arg = std::env::var("OTEL_TRACES_SAMPLER_ARG").ok();
        Sampler::parse(&name, arg.as_deref())
    }

    /// Decides for a span whose parent (if any) had `parent_sampled`.
    pub fn should_sample(&self, trace_id: &TraceId, parent_sampled: Option<bool>) -> bool {
        match (*self, parent_sampled) {
            (Sampler::AlwaysOn, _) => true,
            (Sampler::AlwaysOff, _) => false,
            (Sampler::TraceIdRatio(r), _) => ratio_sample(trace_id, r),
            (Sampler::ParentBased(_), Some(p)) => p,
            (Sampler::ParentBased(Root::AlwaysOn), None) => true,
            (Sampler::ParentBased(Root::AlwaysOff), None) => false,
            (Sampler::ParentBased(Root::TraceIdRatio(r)), None) => ratio_sample(trace_id, r),
        }
    }
}

/// The decision OpenTelemetry's TraceIdRatioBased makes: the trace id's last 8 bytes, as a
/// number, below the ratio's share of the range (so every process agrees on a trace).
fn ratio_sample(trace_id: &TraceId, ratio: f64) -> bool {
    let mut b = [0u8; 8];
    b.copy_from_slice(&trace_id.0[8..]);
    let x = u64::from_be_bytes(b) >> 1;
    (x as f64) < ratio * (1u64 << 63) as f64
}

/// The process's sampler, read from the environment once. A setting that does not parse samples
/// everything (the default) and is reported by [`env_sampler_error`].
pub fn env_sampler() -> Sampler {
    *ENV.get_or_init(|| Sampler::from_env().unwrap_or(Sampler::ParentBased(Root::AlwaysOn)))
}

/// The error in the environment's sampler setting, if any, for a process to report once.
pub fn env_sampler_error() -> Option<SamplerError> {
    Sampler::from_env().err()
}

static ENV: OnceLock<Sampler> = OnceLock::new();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_standard_names() {
        assert_eq!(Sampler::parse("", None), Ok(Sampler::ParentBased(Root::AlwaysOn)));
        assert_eq!(Sampler::parse("always_off", None), Ok(Sampler::AlwaysOff));
        assert_eq!(
            Sampler::parse("parentbased_traceidratio", Some("0.25")),
            Ok(Sampler::ParentBased(Root::TraceIdRatio(0.25)))
        );
        assert!(matches!(Sampler::parse("traceidratio", Some("2")), Err(SamplerError::Ratio(_))));
        assert!(matches!(Sampler::parse("sometimes", None), Err(SamplerError::Unknown(_))));
    }

    #[test]
    fn parent_based_follows_the_parent_and_ratio_splits_ids() {
        let s = Sampler::ParentBased(Root::AlwaysOff);
        let t = TraceId::random();
        assert!(s.should_sample(&t, Some(true)));
        assert!(!s.should_sample(&t, None));
        let half = Sampler::TraceIdRatio(0.5);
        let sampled = (0..2000).filter(|_| half.should_sample(&TraceId::random(), None)).count();
        assert!((800..1200).contains(&sampled), "{sampled} of 2000 sampled at 0.5");
        assert!(!Sampler::TraceIdRatio(0.0).should_sample(&t, None));
        assert!(Sampler::TraceIdRatio(1.0).should_sample(&t, None));
    }
}
