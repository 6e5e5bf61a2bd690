//! A device profile's own telemetry and attributes topics (ThingsBoard's
//! `MqttDeviceProfileTransportConfiguration.deviceTelemetryTopic` / `deviceAttributesTopic`).
//!
//! Every device session checks a publish against the profile's attributes filter first, then
//! its telemetry filter (`MqttTransportHandler.processDevicePublish`), before any other topic
//! of the Device API; the defaults are `v1/devices/me/attributes` and
//! `v1/devices/me/telemetry`. A filter becomes a matcher as `MqttTopicFilterFactory.toFilter`
//! makes one: `#` alone matches everything; a filter with `+` or `#` becomes a regular
//! expression (`\` doubled, `+` → `[^/]+`, `/#` → `($|/.*)`, nothing else escaped, so a `.`
//! in a filter matches any character, as it does in ThingsBoard) that must match the whole
//! topic; anything else must be equal.

use regex::Regex;

use crate::error::ControlError;

/// One topic filter of a device profile.
#[derive(Debug, Clone)]
pub(crate) enum TopicFilter {
    /// `#`.
    Any,
    /// No wildcard: the topic itself.
    Equals(String),
    /// With wildcards, anchored at both ends (Java's `Matcher.matches`).
    Pattern(Regex),
}

impl TopicFilter {
    /// `MqttTopicFilterFactory.toFilter`.
    pub(crate) fn parse(filter: &str) -> Result<Self, ControlError> {
        if filter.is_empty() {
            return Err(ControlError::InvalidTopicFilter(
                "Topic filter can't be empty!".into(),
            ));
        }
        if filter == "#" {
            return Ok(Self::Any);
        }
        if !filter.contains('+') && !filter.contains('#') {
            return Ok(Self::Equals(filter.to_owned()));
        }
        let converted = filter
            .replace('\\', "\\\\")
            .replace('+', "[^/]+")
            .replace("/#", "($|/.*)");
        Regex::new(&format!("^(?:{converted})$"))
            .map(Self::Pattern)
            .map_err(|e| ControlError::InvalidTopicFilter(format!("{filter}: {e}")))
    }

    /// Whether a PUBLISH on `topic` is meant.
    pub(crate) fn matches(&self, topic: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Equals(t) => t == topic,
            Self::Pattern(re) => re.is_match(topic),
        }
    }
}

/// A device profile's telemetry and attributes topic filters; see
/// [`Emulator::set_profile_topics`](crate::Emulator::set_profile_topics).
#[derive(Debug, Clone)]
pub struct ProfileTopics {
    pub(crate) telemetry: TopicFilter,
    pub(crate) attributes: TopicFilter,
}

impl ProfileTopics {
    /// The profile's `deviceTelemetryTopic` and `deviceAttributesTopic` filters (MQTT filter
    /// syntax, `+` and `#` as wildcards). Refused when empty, or when ThingsBoard's conversion
    /// does not give a valid regular expression.
    pub fn new(telemetry: &str, attributes: &str) -> Result<Self, ControlError> {
        Ok(Self {
            telemetry: TopicFilter::parse(telemetry)?,
            attributes: TopicFilter::parse(attributes)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn matches(filter: &str, topic: &str) -> bool {
        TopicFilter::parse(filter).unwrap().matches(topic)
    }

    #[test]
    fn filters_match_as_thingsboard_converts_them() {
        assert!(matches("#", "anything/at/all"));
        assert!(matches("sensors/telemetry", "sensors/telemetry"));
        assert!(!matches("sensors/telemetry", "sensors/telemetry/x"));
        // `+` is one non-empty level.
        assert!(matches("sensors/+/telemetry", "sensors/a1/telemetry"));
        assert!(!matches("sensors/+/telemetry", "sensors//telemetry"));
        assert!(!matches("sensors/+/telemetry", "sensors/a/b/telemetry"));
        // `/#` is the parent level too, and any depth below it.
        assert!(matches("sensors/#", "sensors"));
        assert!(matches("sensors/#", "sensors/a/b"));
        assert!(!matches("sensors/#", "sensorsX"));
        // The whole topic must match (Java's `matches`), not a part of it.
        assert!(!matches("s/+", "x/s/a"));
        // Unescaped: a `.` in a filter with wildcards matches any character.
        assert!(matches("v1.0/+", "v1x0/a"));
        // Without wildcards the filter is compared as it is.
        assert!(!matches("v1.0/a", "v1x0/a"));
    }

    #[test]
    fn empty_and_invalid_filters_are_refused() {
        assert!(matches!(
            TopicFilter::parse(""),
            Err(ControlError::InvalidTopicFilter(_))
        ));
        // An unbalanced parenthesis is not a regular expression.
        assert!(matches!(
            TopicFilter::parse("a(/+"),
            Err(ControlError::InvalidTopicFilter(_))
        ));
        assert!(ProfileTopics::new("t/+", "").is_err());
        assert!(ProfileTopics::new("t/+", "a/#").is_ok());
    }

    proptest! {
        /// Any filter either parses or is refused, and a parsed one never panics on any
        /// topic; a filter without wildcards matches exactly itself.
        #[test]
        fn any_filter_and_topic(filter in "[a-z/+#.()\\\\]{0,12}", topic in "[a-z/.]{0,12}") {
            if let Ok(f) = TopicFilter::parse(&filter) {
                let _ = f.matches(&topic);
                if !filter.contains('+') && !filter.contains('#') {
                    prop_assert_eq!(f.matches(&topic), filter == topic);
                    prop_assert!(f.matches(&filter));
                }
            }
        }
    }
}
