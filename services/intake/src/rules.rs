//! The triage rule set: reviewed, versioned clinical content loaded from TOML.
//!
//! The default rule file (`rules/triage.toml`) is compiled into the binary; an
//! operator may point the service at another file. Loading is strict: a rule
//! that uses an unknown attribute or code, a duplicate rule id, a missing
//! version, or a non-clinical threshold (BMI, smoking, weight) is refused, so a
//! service never runs with rules it does not understand.
//!
//! Evaluation is pure: [`RuleSet::evaluate`] takes a referral and the referral
//! date and returns a [`Decision`].

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use mskflow_events::intake::{Coding, ReferralDetails, StartBackScore};
use mskflow_events::types::{
    FcpPriority, Pathway, RedFlag, RedirectDestination, RequestPriority, StartBackRisk, Urgency,
};
use serde::Deserialize;

/// The rule file shipped with the service.
pub const DEFAULT_RULES: &str = include_str!("../rules/triage.toml");

/// SNOMED CT code system URI.
pub const SNOMED_SYSTEM: &str = "http://snomed.info/sct";

/// `rule_id` recorded when no `[[rule]]` decided and the referral went to a
/// First Contact Practitioner by the priority and pathway tables.
pub const DEFAULT_RULE_ID: &str = "default";

/// Attributes that describe no clinical finding and may never restrict
/// referral (NHS England: no non-clinical thresholds such as BMI or smoking for
/// joint surgery). Compared after lower-casing and mapping `-` to `_`.
const NON_CLINICAL_ATTRIBUTES: &[&str] = &[
    "bmi",
    "body_mass_index",
    "smoking",
    "smoking_status",
    "smoker",
    "tobacco",
    "weight",
    "weight_kg",
    "body_weight",
];

/// Why a rule file was refused.
///
/// Rule loading happens at start-up (or when an operator validates a file);
/// none of these errors crosses a request boundary: the service refuses to
/// start and the binary exits non-zero with the message. Were rules ever
/// loaded through an API, every variant would be gRPC `INVALID_ARGUMENT` /
/// HTTP 422 with OperationOutcome `invalid`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read rule file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not have the rule file's shape.
    #[error("rule file is not valid: {0}")]
    Syntax(#[source] toml::de::Error),
    /// `version` is missing or blank: every decision must name its rules.
    #[error("rule set has no version: every triage decision must record one")]
    EmptyVersion,
    /// Two rules (including `[[priority]]` rules) share an id.
    #[error("rule {rule_id}: duplicate rule id")]
    DuplicateRuleId { rule_id: String },
    /// A condition uses a non-clinical attribute as a barrier.
    #[error(
        "rule {rule_id}: attribute `{attribute}` is a non-clinical threshold; \
         non-clinical thresholds such as BMI or smoking may not restrict referral \
         for joint surgery (NHS England)"
    )]
    NonClinicalBarrier { rule_id: String, attribute: String },
    /// A condition or field this rule engine does not know.
    #[error("rule {rule_id}: unknown attribute `{attribute}`")]
    UnknownAttribute { rule_id: String, attribute: String },
    /// A code outside its value set (red flag, priority, risk, pathway) or a
    /// malformed SNOMED CT concept id.
    #[error("rule {rule_id}: unknown {attribute} code '{code}'")]
    UnknownCode {
        rule_id: String,
        attribute: String,
        code: String,
    },
    /// Anything else wrong with one rule (bad action, empty list, bad age range).
    #[error("rule {rule_id}: {reason}")]
    InvalidRule { rule_id: String, reason: String },
}

/// One condition of a rule. All conditions of a rule must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The referral records any of these red flags.
    RedFlag(Vec<RedFlag>),
    /// A reason (condition) coding is any of these SNOMED CT codes.
    ReasonCode(Vec<String>),
    /// A body site coding is any of these SNOMED CT codes.
    BodySiteCode(Vec<String>),
    /// Age in whole years on the referral date is `< lt` and `>= gte`. Never
    /// holds when the birth date is unknown.
    Age { lt: Option<u32>, gte: Option<u32> },
    /// The STarT Back risk group (computed from the answers) is any of these.
    /// Never holds without STarT Back answers.
    StartBackRisk(Vec<StartBackRisk>),
    /// The referrer's requested priority is any of these.
    RequestedPriority(Vec<RequestPriority>),
}

/// What a deciding rule does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send the referral elsewhere (red flags).
    Redirect {
        destination: RedirectDestination,
        urgency: Urgency,
        reason: String,
    },
    /// Refuse the referral.
    Reject { reason_code: String, reason: String },
    /// Send to a First Contact Practitioner with this priority (pathway from
    /// the pathway table).
    Route { priority: FcpPriority },
}

/// A deciding rule (`[[rule]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub id: String,
    pub description: String,
    pub conditions: Vec<Condition>,
    pub action: Action,
}

/// A priority rule (`[[priority]]`) for referrals routed to an FCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorityRule {
    pub id: String,
    pub description: String,
    pub conditions: Vec<Condition>,
    pub priority: FcpPriority,
}

/// A pathway table entry (`[[pathway]]`): matches on any reason code or any
/// body site code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathwayRule {
    pub pathway: Pathway,
    pub reason_codes: Vec<String>,
    pub body_site_codes: Vec<String>,
}

/// A loaded, validated rule set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    version: String,
    rules: Vec<Rule>,
    priorities: Vec<PriorityRule>,
    pathways: Vec<PathwayRule>,
}

/// The outcome of triage for one referral.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Redirect {
        rule_id: String,
        destination: RedirectDestination,
        urgency: Urgency,
        /// The referral's red flags that made the rule fire.
        red_flags: Vec<RedFlag>,
        reason: String,
    },
    Reject {
        rule_id: String,
        reason_code: String,
        reason: String,
    },
    Triage {
        /// The `route` rule that decided, or [`DEFAULT_RULE_ID`].
        rule_id: String,
        priority: FcpPriority,
        pathway: Pathway,
        start_back: Option<StartBackScore>,
        reasons: Vec<String>,
    },
}

impl RuleSet {
    /// The rule set compiled into the binary.
    pub fn default_rules() -> Result<Self, Error> {
        Self::from_toml(DEFAULT_RULES)
    }

    /// Load and validate a rule file.
    pub fn from_path(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Parse and validate rule-file text.
    pub fn from_toml(text: &str) -> Result<Self, Error> {
        let raw: RawFile = toml::from_str(text).map_err(Error::Syntax)?;
        if let Some(attribute) = raw.other.keys().next() {
            return Err(unknown_attribute("(file)", attribute));
        }
        let version = raw.version.unwrap_or_default().trim().to_owned();
        if version.is_empty() {
            return Err(Error::EmptyVersion);
        }
        let mut ids = HashSet::new();
        let mut rules = Vec::with_capacity(raw.rule.len());
        for r in raw.rule {
            check_id(&r.id, &mut ids)?;
            check_extra(&r.id, &r.other)?;
            let conditions = parse_conditions(&r.id, &r.conditions)?;
            let action = parse_action(&r.id, r.action)?;
            rules.push(Rule {
                id: r.id,
                description: r.description,
                conditions,
                action,
            });
        }
        let mut priorities = Vec::with_capacity(raw.priority.len());
        for p in raw.priority {
            check_id(&p.id, &mut ids)?;
            check_extra(&p.id, &p.other)?;
            let conditions = parse_conditions(&p.id, &p.conditions)?;
            if conditions.is_empty() {
                return Err(invalid(
                    &p.id,
                    "a priority rule needs at least one condition",
                ));
            }
            let priority = FcpPriority::parse(&p.priority)
                .map_err(|_| unknown_code(&p.id, "priority", &p.priority))?;
            priorities.push(PriorityRule {
                id: p.id,
                description: p.description,
                conditions,
                priority,
            });
        }
        let mut pathways = Vec::with_capacity(raw.pathway.len());
        for p in raw.pathway {
            let name = format!("pathway:{}", p.pathway);
            check_extra(&name, &p.other)?;
            let pathway = Pathway::parse(&p.pathway)
                .map_err(|_| unknown_code(&name, "pathway", &p.pathway))?;
            if p.reason_codes.is_empty() && p.body_site_codes.is_empty() {
                return Err(invalid(
                    &name,
                    "a pathway entry needs reason_codes or body_site_codes",
                ));
            }
            for c in &p.reason_codes {
                check_snomed(&name, "reason_codes", c)?;
            }
            for c in &p.body_site_codes {
                check_snomed(&name, "body_site_codes", c)?;
            }
            pathways.push(PathwayRule {
                pathway,
                reason_codes: p.reason_codes,
                body_site_codes: p.body_site_codes,
            });
        }
        Ok(Self {
            version,
            rules,
            priorities,
            pathways,
        })
    }

    /// The version recorded in every decision made with these rules.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn priorities(&self) -> &[PriorityRule] {
        &self.priorities
    }

    pub fn pathways(&self) -> &[PathwayRule] {
        &self.pathways
    }

    /// Triage one referral received on `today`: the first `[[rule]]` whose
    /// conditions all hold decides; otherwise (or for a `route` rule) the
    /// referral goes to a First Contact Practitioner.
    pub fn evaluate(&self, details: &ReferralDetails, today: NaiveDate) -> Decision {
        let facts = Facts::new(details, today);
        let mut reasons = Vec::new();
        let mut rule_id = DEFAULT_RULE_ID.to_owned();
        let mut priority = None;
        if let Some(rule) = self.rules.iter().find(|r| facts.all_hold(&r.conditions)) {
            match &rule.action {
                Action::Redirect {
                    destination,
                    urgency,
                    reason,
                } => {
                    return Decision::Redirect {
                        rule_id: rule.id.clone(),
                        destination: *destination,
                        urgency: *urgency,
                        red_flags: facts.red_flags_for(&rule.conditions),
                        reason: reason.clone(),
                    };
                }
                Action::Reject {
                    reason_code,
                    reason,
                } => {
                    return Decision::Reject {
                        rule_id: rule.id.clone(),
                        reason_code: reason_code.clone(),
                        reason: reason.clone(),
                    };
                }
                Action::Route { priority: p } => {
                    rule_id.clone_from(&rule.id);
                    priority = Some(*p);
                    reasons.push(format!("{}: {}", rule.id, rule.description));
                }
            }
        }
        let priority = match priority {
            Some(p) => p,
            None => match self
                .priorities
                .iter()
                .find(|p| facts.all_hold(&p.conditions))
            {
                Some(p) => {
                    reasons.push(format!("{}: {}", p.id, p.description));
                    p.priority
                }
                None => {
                    reasons.push("priority routine: no priority rule applied".to_owned());
                    FcpPriority::Routine
                }
            },
        };
        let pathway = self.pathway_for(details, &mut reasons);
        if let Some(s) = facts.start_back {
            reasons.push(format!(
                "STarT Back total {} psychosocial {}: {} risk",
                s.total, s.psychosocial, s.risk
            ));
        }
        Decision::Triage {
            rule_id,
            priority,
            pathway,
            start_back: facts.start_back,
            reasons,
        }
    }

    fn pathway_for(&self, details: &ReferralDetails, reasons: &mut Vec<String>) -> Pathway {
        for entry in &self.pathways {
            if let Some(code) = first_match(&details.reason, &entry.reason_codes) {
                reasons.push(format!("pathway {}: reason code {code}", entry.pathway));
                return entry.pathway;
            }
            if let Some(code) = first_match(&details.body_site, &entry.body_site_codes) {
                reasons.push(format!("pathway {}: body site code {code}", entry.pathway));
                return entry.pathway;
            }
        }
        reasons.push("pathway other: no pathway code matched".to_owned());
        Pathway::Other
    }
}

/// What the conditions are evaluated against.
struct Facts<'a> {
    details: &'a ReferralDetails,
    age: Option<u32>,
    start_back: Option<StartBackScore>,
}

impl<'a> Facts<'a> {
    fn new(details: &'a ReferralDetails, today: NaiveDate) -> Self {
        Self {
            details,
            age: details
                .patient
                .birth_date
                .and_then(|b| today.years_since(b)),
            start_back: details.start_back.map(|a| a.score()),
        }
    }

    fn all_hold(&self, conditions: &[Condition]) -> bool {
        conditions.iter().all(|c| self.holds(c))
    }

    fn holds(&self, condition: &Condition) -> bool {
        match condition {
            Condition::RedFlag(any) => self.details.red_flags.iter().any(|f| any.contains(f)),
            Condition::ReasonCode(any) => first_match(&self.details.reason, any).is_some(),
            Condition::BodySiteCode(any) => first_match(&self.details.body_site, any).is_some(),
            Condition::Age { lt, gte } => match self.age {
                Some(age) => lt.is_none_or(|lt| age < lt) && gte.is_none_or(|gte| age >= gte),
                None => false,
            },
            Condition::StartBackRisk(any) => self.start_back.is_some_and(|s| any.contains(&s.risk)),
            Condition::RequestedPriority(any) => any.contains(&self.details.requested_priority),
        }
    }

    /// The referral's red flags named by the rule's red-flag conditions (all
    /// of its red flags when the rule has none), without repeats.
    fn red_flags_for(&self, conditions: &[Condition]) -> Vec<RedFlag> {
        let named: Vec<&Vec<RedFlag>> = conditions
            .iter()
            .filter_map(|c| match c {
                Condition::RedFlag(any) => Some(any),
                _ => None,
            })
            .collect();
        let mut out = Vec::new();
        for f in &self.details.red_flags {
            if (named.is_empty() || named.iter().any(|any| any.contains(f))) && !out.contains(f) {
                out.push(*f);
            }
        }
        out
    }
}

/// The first SNOMED CT code among `codings` that is in `codes`. Codings with
/// no system are taken as SNOMED CT (the gateway sends SNOMED CT only).
fn first_match<'c>(codings: &'c [Coding], codes: &[String]) -> Option<&'c str> {
    codings
        .iter()
        .filter(|c| c.system.as_deref().is_none_or(|s| s == SNOMED_SYSTEM))
        .map(|c| c.code.as_str())
        .find(|code| codes.iter().any(|w| w == code))
}

// ---- loading ----

#[derive(Debug, Deserialize)]
struct RawFile {
    version: Option<String>,
    #[serde(default)]
    rule: Vec<RawRule>,
    #[serde(default)]
    priority: Vec<RawPriority>,
    #[serde(default)]
    pathway: Vec<RawPathway>,
    #[serde(flatten)]
    other: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Deserialize)]
struct RawRule {
    id: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    conditions: toml::Table,
    action: toml::Value,
    #[serde(flatten)]
    other: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Deserialize)]
struct RawPriority {
    id: String,
    #[serde(default)]
    description: String,
    priority: String,
    #[serde(default)]
    conditions: toml::Table,
    #[serde(flatten)]
    other: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Deserialize)]
struct RawPathway {
    pathway: String,
    #[serde(default)]
    reason_codes: Vec<String>,
    #[serde(default)]
    body_site_codes: Vec<String>,
    #[serde(flatten)]
    other: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnyOf {
    any_of: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAge {
    lt: Option<u32>,
    gte: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum RawAction {
    Redirect {
        destination: String,
        urgency: String,
        reason: String,
    },
    Reject {
        reason_code: String,
        reason: String,
    },
    Route {
        priority: String,
    },
}

fn invalid(rule_id: &str, reason: impl Into<String>) -> Error {
    Error::InvalidRule {
        rule_id: rule_id.to_owned(),
        reason: reason.into(),
    }
}

fn unknown_code(rule_id: &str, attribute: &str, code: &str) -> Error {
    Error::UnknownCode {
        rule_id: rule_id.to_owned(),
        attribute: attribute.to_owned(),
        code: code.to_owned(),
    }
}

fn is_non_clinical(attribute: &str) -> bool {
    let norm = attribute.to_ascii_lowercase().replace('-', "_");
    NON_CLINICAL_ATTRIBUTES.contains(&norm.as_str())
}

/// A non-clinical attribute is refused as such, anything else as unknown.
fn unknown_attribute(rule_id: &str, attribute: &str) -> Error {
    if is_non_clinical(attribute) {
        Error::NonClinicalBarrier {
            rule_id: rule_id.to_owned(),
            attribute: attribute.to_owned(),
        }
    } else {
        Error::UnknownAttribute {
            rule_id: rule_id.to_owned(),
            attribute: attribute.to_owned(),
        }
    }
}

fn check_id(id: &str, seen: &mut HashSet<String>) -> Result<(), Error> {
    if id.trim().is_empty() {
        return Err(invalid(id, "rule id must not be empty"));
    }
    if id == DEFAULT_RULE_ID {
        return Err(invalid(id, "`default` is reserved for the default route"));
    }
    if !seen.insert(id.to_owned()) {
        return Err(Error::DuplicateRuleId {
            rule_id: id.to_owned(),
        });
    }
    Ok(())
}

fn check_extra(rule_id: &str, other: &BTreeMap<String, toml::Value>) -> Result<(), Error> {
    // Non-clinical attributes first, so the clinical-safety reason is the one
    // reported.
    if let Some(a) = other.keys().find(|a| is_non_clinical(a)) {
        return Err(unknown_attribute(rule_id, a));
    }
    match other.keys().next() {
        Some(a) => Err(unknown_attribute(rule_id, a)),
        None => Ok(()),
    }
}

fn check_snomed(rule_id: &str, attribute: &str, code: &str) -> Result<(), Error> {
    // SNOMED CT concept ids: 6 to 18 digits, no leading zero.
    let ok = (6..=18).contains(&code.len())
        && code.bytes().all(|b| b.is_ascii_digit())
        && !code.starts_with('0');
    if ok {
        Ok(())
    } else {
        Err(unknown_code(rule_id, attribute, code))
    }
}

fn parse_any_of<T>(
    rule_id: &str,
    attribute: &str,
    value: &toml::Value,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>, Error> {
    let raw: RawAnyOf = value.clone().try_into().map_err(|e: toml::de::Error| {
        invalid(
            rule_id,
            format!("condition `{attribute}` must be {{ any_of = [..] }}: {e}"),
        )
    })?;
    if raw.any_of.is_empty() {
        return Err(invalid(
            rule_id,
            format!("condition `{attribute}`: any_of must not be empty"),
        ));
    }
    raw.any_of
        .iter()
        .map(|code| parse(code).ok_or_else(|| unknown_code(rule_id, attribute, code)))
        .collect()
}

fn parse_conditions(rule_id: &str, table: &toml::Table) -> Result<Vec<Condition>, Error> {
    if let Some(a) = table.keys().find(|a| is_non_clinical(a)) {
        return Err(unknown_attribute(rule_id, a));
    }
    let snomed = |c: &str| check_snomed(rule_id, "", c).ok().map(|()| c.to_owned());
    let mut out = Vec::with_capacity(table.len());
    for (attribute, value) in table {
        let condition = match attribute.as_str() {
            "red_flag" => Condition::RedFlag(parse_any_of(rule_id, attribute, value, |c| {
                RedFlag::parse(c).ok()
            })?),
            "reason_code" => {
                Condition::ReasonCode(parse_any_of(rule_id, attribute, value, snomed)?)
            }
            "body_site_code" => {
                Condition::BodySiteCode(parse_any_of(rule_id, attribute, value, snomed)?)
            }
            "start_back_risk" => {
                Condition::StartBackRisk(parse_any_of(rule_id, attribute, value, |c| {
                    StartBackRisk::parse(c).ok()
                })?)
            }
            "requested_priority" => {
                Condition::RequestedPriority(parse_any_of(rule_id, attribute, value, |c| {
                    RequestPriority::parse(c).ok()
                })?)
            }
            "age" => {
                let raw: RawAge = value.clone().try_into().map_err(|e: toml::de::Error| {
                    invalid(
                        rule_id,
                        format!("condition `age` must be {{ lt = N, gte = N }}: {e}"),
                    )
                })?;
                match (raw.lt, raw.gte) {
                    (None, None) => {
                        return Err(invalid(rule_id, "condition `age` needs `lt` or `gte`"));
                    }
                    (Some(lt), Some(gte)) if gte >= lt => {
                        return Err(invalid(
                            rule_id,
                            format!("condition `age`: gte {gte} >= lt {lt} never holds"),
                        ));
                    }
                    (lt, gte) => Condition::Age { lt, gte },
                }
            }
            other => return Err(unknown_attribute(rule_id, other)),
        };
        out.push(condition);
    }
    Ok(out)
}

fn parse_action(rule_id: &str, value: toml::Value) -> Result<Action, Error> {
    let raw: RawAction = value.try_into().map_err(|e: toml::de::Error| {
        invalid(
            rule_id,
            format!("action must be one of redirect, reject, route: {e}"),
        )
    })?;
    Ok(match raw {
        RawAction::Redirect {
            destination,
            urgency,
            reason,
        } => Action::Redirect {
            destination: RedirectDestination::parse(&destination)
                .map_err(|_| unknown_code(rule_id, "destination", &destination))?,
            urgency: Urgency::parse(&urgency)
                .map_err(|_| unknown_code(rule_id, "urgency", &urgency))?,
            reason,
        },
        RawAction::Reject {
            reason_code,
            reason,
        } => {
            if reason_code.trim().is_empty() {
                return Err(invalid(rule_id, "reject needs a reason_code"));
            }
            Action::Reject {
                reason_code,
                reason,
            }
        }
        RawAction::Route { priority } => Action::Route {
            priority: FcpPriority::parse(&priority)
                .map_err(|_| unknown_code(rule_id, "priority", &priority))?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> Error {
        match RuleSet::from_toml(text) {
            Ok(r) => panic!("rule file accepted: {r:?}"),
            Err(e) => e,
        }
    }

    const REDIRECT: &str = r#"action.redirect = { destination = "fracture-clinic", urgency = "urgent", reason = "r" }"#;

    #[test]
    fn the_default_file_loads() -> Result<(), Error> {
        let rules = RuleSet::default_rules()?;
        assert_eq!(rules.version(), "2026.1");
        let ids: Vec<&str> = rules.rules().iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "suspected-cauda-equina",
                "suspected-cancer",
                "suspected-infection",
                "suspected-fracture",
                "suspected-inflammatory-arthritis",
                "under-16",
            ]
        );
        assert_eq!(rules.priorities().len(), 2);
        let pathways: HashSet<Pathway> = rules.pathways().iter().map(|p| p.pathway).collect();
        // Every pathway but the default has an entry.
        assert_eq!(pathways.len(), Pathway::ALL.len() - 1);
        assert!(!pathways.contains(&Pathway::Other));
        Ok(())
    }

    #[test]
    fn a_file_loads_from_a_path() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, "version = \"test-1\"\n")?;
        let rules = RuleSet::from_path(&path)?;
        assert_eq!(rules.version(), "test-1");
        assert!(matches!(
            RuleSet::from_path(&dir.path().join("missing.toml")),
            Err(Error::Read { .. })
        ));
        Ok(())
    }

    #[test]
    fn bmi_barrier_is_refused_naming_the_rule() {
        let e = refused(&format!(
            "version = \"1\"\n[[rule]]\nid = \"no-surgery-if-obese\"\nconditions.bmi = {{ gte = 40 }}\n{REDIRECT}\n"
        ));
        assert!(
            matches!(&e, Error::NonClinicalBarrier { rule_id, attribute } if rule_id == "no-surgery-if-obese" && attribute == "bmi"),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(msg.contains("no-surgery-if-obese"), "{msg}");
        assert!(msg.contains("non-clinical"), "{msg}");
        assert!(msg.contains("joint surgery"), "{msg}");
        assert!(msg.contains("NHS England"), "{msg}");
    }

    #[test]
    fn smoking_barriers_are_refused_wherever_they_appear() {
        for (text, rule) in [
            (
                format!(
                    "version = \"1\"\n[[rule]]\nid = \"smokers-out\"\nconditions.smoking = {{ any_of = [\"current\"] }}\n{REDIRECT}\n"
                ),
                "smokers-out",
            ),
            (
                "version = \"1\"\n[[priority]]\nid = \"smokers-wait\"\npriority = \"routine\"\nconditions.smoking_status = { any_of = [\"current\"] }\n".to_owned(),
                "smokers-wait",
            ),
            (
                "version = \"1\"\n[[rule]]\nid = \"heavy\"\nweight = 120\nconditions.age.gte = 18\naction.route = { priority = \"routine\" }\n".to_owned(),
                "heavy",
            ),
        ] {
            let e = refused(&text);
            assert!(
                matches!(&e, Error::NonClinicalBarrier { rule_id, .. } if rule_id == rule),
                "{e:?}"
            );
        }
    }

    #[test]
    fn unknown_attribute_is_refused() {
        let e = refused(&format!(
            "version = \"1\"\n[[rule]]\nid = \"postcode-rule\"\nconditions.postcode = {{ any_of = [\"LS1\"] }}\n{REDIRECT}\n"
        ));
        assert!(
            matches!(&e, Error::UnknownAttribute { rule_id, attribute } if rule_id == "postcode-rule" && attribute == "postcode"),
            "{e:?}"
        );
    }

    #[test]
    fn unknown_red_flag_code_is_refused() {
        let e = refused(&format!(
            "version = \"1\"\n[[rule]]\nid = \"odd\"\nconditions.red_flag.any_of = [\"saddle-anaesthesia\", \"itchy-elbow\"]\n{REDIRECT}\n"
        ));
        assert!(
            matches!(&e, Error::UnknownCode { rule_id, attribute, code } if rule_id == "odd" && attribute == "red_flag" && code == "itchy-elbow"),
            "{e:?}"
        );
    }

    #[test]
    fn unknown_action_codes_and_bad_snomed_are_refused() {
        let e = refused(
            "version = \"1\"\n[[rule]]\nid = \"x\"\nconditions.age.gte = 1\naction.redirect = { destination = \"moon\", urgency = \"urgent\", reason = \"r\" }\n",
        );
        assert!(
            matches!(&e, Error::UnknownCode { attribute, .. } if attribute == "destination"),
            "{e:?}"
        );
        let e = refused(
            "version = \"1\"\n[[pathway]]\npathway = \"knee\"\nreason_codes = [\"knee-pain\"]\n",
        );
        assert!(matches!(&e, Error::UnknownCode { .. }), "{e:?}");
        let e = refused(
            "version = \"1\"\n[[pathway]]\npathway = \"elbow\"\nreason_codes = [\"30989003\"]\n",
        );
        assert!(
            matches!(&e, Error::UnknownCode { rule_id, .. } if rule_id == "pathway:elbow"),
            "{e:?}"
        );
        let e = refused("version = \"1\"\n[[rule]]\nid = \"y\"\naction.teleport = {}\n");
        assert!(
            matches!(&e, Error::InvalidRule { rule_id, .. } if rule_id == "y"),
            "{e:?}"
        );
    }

    #[test]
    fn duplicate_rule_id_is_refused() {
        let e = refused(&format!(
            "version = \"1\"\n[[rule]]\nid = \"a\"\nconditions.age.lt = 16\n{REDIRECT}\n[[priority]]\nid = \"a\"\npriority = \"soon\"\nconditions.age.gte = 80\n"
        ));
        assert!(
            matches!(&e, Error::DuplicateRuleId { rule_id } if rule_id == "a"),
            "{e:?}"
        );
    }

    #[test]
    fn empty_or_missing_version_is_refused() {
        assert!(matches!(refused("version = \"  \"\n"), Error::EmptyVersion));
        assert!(matches!(
            refused("[[pathway]]\npathway = \"knee\"\nreason_codes = [\"30989003\"]\n"),
            Error::EmptyVersion
        ));
    }

    #[test]
    fn a_route_rule_sets_priority_and_keeps_the_pathway_table()
    -> Result<(), Box<dyn std::error::Error>> {
        use mskflow_events::intake::{PatientDetails, Sender};
        use mskflow_events::types::{NhsNumber, ReceivedVia};
        let rules = RuleSet::from_toml(
            r#"
version = "local-3"
[[rule]]
id = "older-hip"
description = "Hip pain at 65 or over is seen soon"
conditions.age.gte = 65
conditions.body_site_code.any_of = ["24136001"]
action.route = { priority = "soon" }
[[pathway]]
pathway = "hip"
body_site_codes = ["24136001"]
"#,
        )?;
        let today = NaiveDate::from_ymd_opt(2026, 6, 1).ok_or("date")?;
        let mut details = ReferralDetails {
            received_via: ReceivedVia::ServiceRequestCreate,
            sender: Sender {
                ods_code: None,
                endpoint: None,
                message_id: None,
                software: None,
            },
            service_request_identifier: None,
            patient: PatientDetails {
                nhs_number: Some(NhsNumber::parse("9434765919")?),
                family: None,
                given: vec![],
                birth_date: NaiveDate::from_ymd_opt(1961, 6, 1),
                sex: None,
                postcode: None,
                ethnicity: None,
            },
            requester: None,
            reason: vec![],
            body_site: vec![Coding {
                system: None,
                code: "24136001".to_owned(),
                display: None,
            }],
            requested_priority: RequestPriority::Routine,
            red_flags: vec![],
            start_back: None,
            note: None,
            authored_on: None,
            fhir_json: String::new(),
        };
        match rules.evaluate(&details, today) {
            Decision::Triage {
                rule_id,
                priority,
                pathway,
                ..
            } => {
                assert_eq!(rule_id, "older-hip");
                assert_eq!(priority, FcpPriority::Soon);
                assert_eq!(pathway, Pathway::Hip);
            }
            other => return Err(format!("unexpected {other:?}").into()),
        }
        // A day short of 65: the rule does not hold; default route.
        details.patient.birth_date = NaiveDate::from_ymd_opt(1961, 6, 2);
        match rules.evaluate(&details, today) {
            Decision::Triage {
                rule_id, priority, ..
            } => {
                assert_eq!(rule_id, DEFAULT_RULE_ID);
                assert_eq!(priority, FcpPriority::Routine);
            }
            other => return Err(format!("unexpected {other:?}").into()),
        }
        Ok(())
    }

    #[test]
    fn impossible_age_range_is_refused() {
        let e = refused(&format!(
            "version = \"1\"\n[[rule]]\nid = \"never\"\nconditions.age = {{ lt = 10, gte = 20 }}\n{REDIRECT}\n"
        ));
        assert!(
            matches!(&e, Error::InvalidRule { rule_id, .. } if rule_id == "never"),
            "{e:?}"
        );
    }
}
