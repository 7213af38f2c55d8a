//! The topic set, as code: names, which streams go where, and the settings
//! each topic is created with.

use std::fmt;

/// The services that own a topic of their own.
pub const SERVICES: &[&str] = &["intake", "assessment", "scheduling", "outcomes", "gateway"];

/// The durable consumers with a dead-letter topic each.
pub const CONSUMERS: &[&str] = &[
    "assessment",
    "scheduling",
    "outcomes",
    "gateway-delivery",
    "gateway-notifications",
];

/// The services' topics a service's instances read: their own, and those
/// of the services whose events they consume or look up (assessment reads
/// referrals; scheduling reads assessments; outcomes reads assessments and
/// rehabilitation). `None` for the gateway and anything else (the tools, the
/// all-in-one process): every topic. Each instance also reads the
/// operations topic and the dead-letter topics of its service's consumers
/// ([`TopicSettings::followed`]). The service's own topic comes last.
pub fn reads_of(service: &str) -> Option<&'static [&'static str]> {
    match service {
        "intake" => Some(&["intake"]),
        "assessment" => Some(&["intake", "assessment"]),
        "scheduling" => Some(&["assessment", "scheduling"]),
        "outcomes" => Some(&["assessment", "scheduling", "outcomes"]),
        _ => None,
    }
}

/// The service a durable consumer belongs to (`gateway-delivery` is the
/// gateway's).
pub fn service_of_consumer(consumer: &str) -> &str {
    consumer.split('-').next().unwrap_or(consumer)
}

/// Settings of the topic set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSettings {
    /// Name prefix (`mskflow` gives `mskflow.intake.v1`).
    pub prefix: String,
    /// Partitions per topic. Fixed once created: the partition of a
    /// referral is derived from its key and the count.
    pub partitions: i32,
    /// Replication factor (3 in production; 1 on a single test broker).
    pub replication: i32,
}

impl Default for TopicSettings {
    fn default() -> Self {
        Self {
            prefix: "mskflow".to_owned(),
            partitions: 6,
            replication: 3,
        }
    }
}

/// One topic and why it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication: i32,
    /// Topic-level configuration set at creation.
    pub config: Vec<(&'static str, String)>,
    pub purpose: String,
}

impl fmt::Display for TopicSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (partitions {}, replication {}): {}",
            self.name, self.partitions, self.replication, self.purpose
        )
    }
}

/// Events are the record: never deleted by time or size, never compacted
/// (compaction keeps one record per key and would drop a referral's
/// history). `min.insync.replicas=2` with `acks=all` means an acknowledged
/// append survives the loss of one broker; with fewer replicas (a single
/// development broker) it is the replication factor, or no write could
/// ever be acknowledged.
fn event_topic_config(replication: i32) -> Vec<(&'static str, String)> {
    vec![
        ("cleanup.policy", "delete".to_owned()),
        ("retention.ms", "-1".to_owned()),
        ("retention.bytes", "-1".to_owned()),
        ("min.insync.replicas", replication.clamp(1, 2).to_string()),
    ]
}

impl TopicSettings {
    /// The topic of one service's events.
    pub fn service_topic(&self, service: &str) -> String {
        format!("{}.{service}.v1", self.prefix)
    }

    /// The dead-letter topic of one consumer.
    pub fn dead_letter_topic(&self, consumer: &str) -> String {
        format!("{}.deadletter.{consumer}.v1", self.prefix)
    }

    /// Streams that belong to no service (operator records).
    pub fn operations_topic(&self) -> String {
        format!("{}.operations.v1", self.prefix)
    }

    /// The analysts' stream: every pathway event, pseudonymised (published
    /// by the gateway; not part of the event log).
    pub fn analytics_topic(&self) -> String {
        format!("{}.analytics.v1", self.prefix)
    }

    /// The consumer group of a durable consumer.
    pub fn group(&self, consumer: &str) -> String {
        format!("{}.{consumer}", self.prefix)
    }

    /// Which topic a stream's events go to.
    pub fn topic_for_stream(&self, stream_id: &str) -> String {
        let service = if stream_id.starts_with("referral-") {
            "intake"
        } else if stream_id.starts_with("assessment-") || stream_id.starts_with("fcp-slot-") {
            "assessment"
        } else if ["rehab-", "venue-", "class-"]
            .iter()
            .any(|p| stream_id.starts_with(p))
        {
            "scheduling"
        } else if stream_id.starts_with("outcomes-") {
            "outcomes"
        } else if ["delivery-", "notify-", "audit-", "selfref-"]
            .iter()
            .any(|p| stream_id.starts_with(p))
        {
            "gateway"
        } else if let Some(consumer) = stream_id.strip_prefix("deadletter-") {
            if CONSUMERS.contains(&consumer) {
                return self.dead_letter_topic(consumer);
            }
            return self.operations_topic();
        } else {
            return self.operations_topic();
        };
        self.service_topic(service)
    }

    /// Every topic of the set, with its settings.
    pub fn specs(&self) -> Vec<TopicSpec> {
        let mut specs: Vec<TopicSpec> = SERVICES
            .iter()
            .map(|s| TopicSpec {
                name: self.service_topic(s),
                partitions: self.partitions,
                replication: self.replication,
                config: event_topic_config(self.replication),
                purpose: format!("{s} events, keyed by referral id"),
            })
            .collect();
        specs.extend(CONSUMERS.iter().map(|c| TopicSpec {
            name: self.dead_letter_topic(c),
            partitions: 1,
            replication: self.replication,
            config: event_topic_config(self.replication),
            purpose: format!("events the {c} consumer could not handle, with the reason"),
        }));
        specs.push(TopicSpec {
            name: self.operations_topic(),
            partitions: 1,
            replication: self.replication,
            config: event_topic_config(self.replication),
            purpose: "operator records and streams of no service".to_owned(),
        });
        specs.push(TopicSpec {
            name: self.analytics_topic(),
            partitions: self.partitions,
            replication: self.replication,
            config: event_topic_config(self.replication),
            purpose: "pseudonymised pathway events for analysts".to_owned(),
        });
        specs
    }

    /// Names of the event log's topics: what the index follows and durable
    /// consumers subscribe to. The analysts' topic is created and checked
    /// with the set ([`TopicSettings::specs`]) but holds no log records, so
    /// it is not one of them.
    pub fn names(&self) -> Vec<String> {
        let analytics = self.analytics_topic();
        self.specs()
            .into_iter()
            .map(|s| s.name)
            .filter(|n| *n != analytics)
            .collect()
    }

    /// The log's topics an instance of `service` follows: those the service
    /// reads ([`reads_of`]), the dead-letter topics of its consumers and the
    /// operations topic; every topic ([`TopicSettings::names`]) for `None`
    /// or a service that reads everything (the gateway).
    pub fn followed(&self, service: Option<&str>) -> Vec<String> {
        let Some((service, reads)) = service.and_then(|s| Some((s, reads_of(s)?))) else {
            return self.names();
        };
        let mut names: Vec<String> = reads.iter().map(|s| self.service_topic(s)).collect();
        names.extend(
            CONSUMERS
                .iter()
                .filter(|c| service_of_consumer(c) == service)
                .map(|c| self.dead_letter_topic(c)),
        );
        names.push(self.operations_topic());
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_follows_its_services_topics_and_its_consumers_dead_letters() {
        let t = TopicSettings::default();
        assert_eq!(
            t.followed(Some("intake")),
            ["mskflow.intake.v1", "mskflow.operations.v1"]
        );
        assert_eq!(
            t.followed(Some("assessment")),
            [
                "mskflow.intake.v1",
                "mskflow.assessment.v1",
                "mskflow.deadletter.assessment.v1",
                "mskflow.operations.v1"
            ]
        );
        // Outcomes reads scheduling's topic but not its dead letters.
        let outcomes = t.followed(Some("outcomes"));
        assert!(outcomes.contains(&"mskflow.scheduling.v1".to_owned()));
        assert!(outcomes.contains(&"mskflow.deadletter.outcomes.v1".to_owned()));
        assert!(!outcomes.contains(&"mskflow.deadletter.scheduling.v1".to_owned()));
        assert!(!outcomes.contains(&"mskflow.gateway.v1".to_owned()));
        assert_eq!(t.followed(Some("gateway")), t.names());
        assert_eq!(t.followed(None), t.names());
        assert_eq!(service_of_consumer("gateway-delivery"), "gateway");
        assert_eq!(service_of_consumer("scheduling"), "scheduling");
        // Every service whose consumer is listed reads its dead letters.
        for c in CONSUMERS {
            let s = service_of_consumer(c);
            assert!(t.followed(Some(s)).contains(&t.dead_letter_topic(c)));
        }
    }

    #[test]
    fn streams_go_to_their_owners_topic() {
        let t = TopicSettings::default();
        let id = "0b6f3b3c-7a36-4d5e-9a51-3f1f0c2b8a11";
        assert_eq!(
            t.topic_for_stream(&format!("referral-{id}")),
            "mskflow.intake.v1"
        );
        assert_eq!(
            t.topic_for_stream(&format!("fcp-slot-{id}")),
            "mskflow.assessment.v1"
        );
        assert_eq!(
            t.topic_for_stream(&format!("rehab-slot-{id}")),
            "mskflow.scheduling.v1"
        );
        assert_eq!(
            t.topic_for_stream(&format!("outcomes-{id}")),
            "mskflow.outcomes.v1"
        );
        assert_eq!(t.topic_for_stream("audit-2026-11-23"), "mskflow.gateway.v1");
        assert_eq!(
            t.topic_for_stream(&format!("selfref-{id}")),
            "mskflow.gateway.v1"
        );
        assert_eq!(
            t.topic_for_stream("deadletter-scheduling"),
            "mskflow.deadletter.scheduling.v1"
        );
        assert_eq!(
            t.topic_for_stream("something-else"),
            "mskflow.operations.v1"
        );
        let names = t.names();
        let single = TopicSettings {
            replication: 1,
            ..TopicSettings::default()
        };
        for spec in single.specs() {
            assert!(
                spec.config
                    .contains(&("min.insync.replicas", "1".to_owned()))
            );
        }
        for spec in t.specs() {
            assert!(
                spec.config
                    .contains(&("min.insync.replicas", "2".to_owned()))
            );
        }
        assert!(names.contains(&t.topic_for_stream("deadletter-unknown")));
        assert_eq!(names.len(), SERVICES.len() + CONSUMERS.len() + 1);
        // The analysts' topic is created with the set but is not read as
        // part of the log.
        let analytics = t
            .specs()
            .into_iter()
            .find(|s| s.name == "mskflow.analytics.v1");
        assert!(analytics.is_some_and(|s| s.partitions == t.partitions
            && s.config.contains(&("retention.ms", "-1".to_owned()))
            && s.purpose == "pseudonymised pathway events for analysts"));
        assert!(!names.contains(&t.analytics_topic()));
        assert_eq!(t.specs().len(), names.len() + 1);
    }
}
