//! Prometheus text exposition (format 0.0.4) through `prometheus-client`.
//!
//! The values live elsewhere (pinned maps, the daemon's status), so each
//! scrape encodes a [`Collector`] built from a snapshot of them rather than
//! keeping registered atomic metrics in step. prometheus-client escapes
//! label values (quotes, backslashes, newlines in rule or NVA names).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The `Content-Type` of /metrics (as served before prometheus-client).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// The exposition text of `collector`.
pub fn render(collector: impl Collector) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

/// One metric without labels. Counter names are given without `_total`;
/// the encoder appends it.
pub fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// One metric family: a sample per label set.
pub fn family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    samples: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, metric) in samples {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A sample read back: name, labels, value.
#[cfg(test)]
pub(crate) type Sample = (String, Vec<(String, String)>, f64);

/// A strict reader of the exposition text for tests: every line is a
/// `# HELP`/`# TYPE` line or `name{label="value",…} number`; label values
/// come back unescaped.
#[cfg(test)]
pub(crate) fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("no value: {line:?}"));
        let name = &line[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name: {line:?}"
        );
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(after) = rest.strip_prefix('{') {
            rest = after;
            loop {
                if let Some(after) = rest.strip_prefix('}') {
                    rest = after;
                    break;
                }
                rest = rest.strip_prefix(',').unwrap_or(rest);
                let (key, after) = rest
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("label: {line:?}"));
                let mut value = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c @ ('\\' | '"'))) => value.push(c),
                            other => panic!("escape {other:?} in {line:?}"),
                        },
                        Some((i, '"')) => break i,
                        Some((_, c)) => value.push(c),
                        None => panic!("unterminated label value: {line:?}"),
                    }
                };
                labels.push((key.to_string(), value));
                rest = &after[end + 1..];
            }
        }
        let value = rest
            .strip_prefix(' ')
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("value: {line:?}"));
        samples.push((name.to_string(), labels, value));
    }
    samples
}
