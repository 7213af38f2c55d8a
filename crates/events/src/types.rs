//! Value objects: parse, don't validate. A value of these types is always valid.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// Why a value object was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not ten digits, or the modulus 11 check digit does not match.
    /// HTTP 400 OperationOutcome `value`/`invalid`; gRPC `INVALID_ARGUMENT`.
    #[error("invalid NHS number: {0}")]
    NhsNumber(&'static str),
    /// Not an ODS organisation code. HTTP 400 `value`; gRPC `INVALID_ARGUMENT`.
    #[error("invalid ODS code: {0}")]
    OdsCode(&'static str),
    /// A code that is not in its value set. HTTP 400 `code-invalid`.
    #[error("unknown code '{code}' for {what}")]
    UnknownCode { what: &'static str, code: String },
}

/// A 10-digit NHS number with a valid modulus 11 check digit.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NhsNumber(String);

impl NhsNumber {
    /// Parse an NHS number. Spaces (as printed on letters, `943 476 5919`) are
    /// accepted and removed; anything else must be a digit.
    pub fn parse(input: &str) -> Result<Self, Error> {
        let digits: Vec<u32> = input
            .chars()
            .filter(|c| *c != ' ')
            .map(|c| {
                c.to_digit(10)
                    .ok_or(Error::NhsNumber("must contain only digits"))
            })
            .collect::<Result<_, _>>()?;
        if digits.len() != 10 {
            return Err(Error::NhsNumber("must be 10 digits"));
        }
        let sum: u32 = digits
            .iter()
            .take(9)
            .enumerate()
            .map(|(i, d)| d * (10 - i as u32))
            .sum();
        let check = match 11 - (sum % 11) {
            11 => 0,
            10 => {
                return Err(Error::NhsNumber(
                    "check digit would be 10: not a valid number",
                ));
            }
            c => c,
        };
        if digits[9] != check {
            return Err(Error::NhsNumber("check digit does not match (modulus 11)"));
        }
        Ok(Self(
            digits.iter().map(|d| char::from(b'0' + *d as u8)).collect(),
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NhsNumber {
    // Patient-identifiable: never printed in full by Debug (logs).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NhsNumber(***)")
    }
}

impl TryFrom<String> for NhsNumber {
    type Error = Error;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<NhsNumber> for String {
    fn from(value: NhsNumber) -> Self {
        value.0
    }
}

impl JsonSchema for NhsNumber {
    fn schema_name() -> Cow<'static, str> {
        "NhsNumber".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[0-9]{10}$",
            "description": "NHS number: 10 digits with a modulus 11 check digit"
        })
    }
}

/// An ODS organisation code (e.g. `Y12345`, `RR8`, `A81001`): 3 to 10
/// upper-case letters and digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OdsCode(String);

impl OdsCode {
    pub fn parse(input: &str) -> Result<Self, Error> {
        let code = input.trim().to_ascii_uppercase();
        if !(3..=10).contains(&code.len()) {
            return Err(Error::OdsCode("must be 3 to 10 characters"));
        }
        if !code
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        {
            return Err(Error::OdsCode("must contain only letters and digits"));
        }
        Ok(Self(code))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for OdsCode {
    type Error = Error;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<OdsCode> for String {
    fn from(value: OdsCode) -> Self {
        value.0
    }
}

impl JsonSchema for OdsCode {
    fn schema_name() -> Cow<'static, str> {
        "OdsCode".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[A-Z0-9]{3,10}$",
            "description": "ODS organisation code"
        })
    }
}

/// Declares a closed code list: a serde enum with kebab-case codes, parsing
/// from its code, and the list of codes (for error messages and schemas).
macro_rules! code_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($(#[$vmeta:meta])* $variant:ident = $code:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $code)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn code(self) -> &'static str {
                match self { $($name::$variant => $code),+ }
            }

            pub fn parse(code: &str) -> Result<Self, Error> {
                match code {
                    $($code => Ok($name::$variant),)+
                    other => Err(Error::UnknownCode { what: $what, code: other.to_owned() }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.code())
            }
        }
    };
}
pub(crate) use code_enum;

code_enum!(
    /// Red-flag findings a referrer can record (code system
    /// [`crate::RED_FLAG_SYSTEM`]).
    RedFlag, "red flag" {
        SaddleAnaesthesia = "saddle-anaesthesia",
        BladderOrBowelDysfunction = "bladder-or-bowel-dysfunction",
        BilateralNeurologicalSymptoms = "bilateral-neurological-symptoms",
        HistoryOfCancer = "history-of-cancer",
        UnexplainedWeightLoss = "unexplained-weight-loss",
        NightPain = "night-pain",
        FeverOrSystemicIllness = "fever-or-systemic-illness",
        Immunosuppression = "immunosuppression",
        IntravenousDrugUse = "intravenous-drug-use",
        SignificantTrauma = "significant-trauma",
        OsteoporosisOrSteroidUse = "osteoporosis-or-steroid-use",
        InflammatoryMorningStiffness = "inflammatory-morning-stiffness",
        PersistentJointSwelling = "persistent-joint-swelling",
    }
);

code_enum!(
    /// FHIR `request-priority` as sent by the referrer.
    RequestPriority, "ServiceRequest.priority" {
        Routine = "routine",
        Urgent = "urgent",
        Asap = "asap",
        Stat = "stat",
    }
);

code_enum!(
    /// FHIR administrative gender.
    Sex, "Patient.gender" {
        Male = "male",
        Female = "female",
        Other = "other",
        Unknown = "unknown",
    }
);

code_enum!(
    /// Priority for First Contact Practitioner assessment.
    FcpPriority, "FCP priority" {
        Urgent = "urgent",
        Soon = "soon",
        Routine = "routine",
    }
);

code_enum!(
    /// The clinical pathway a referral is triaged to.
    Pathway, "pathway" {
        BackAndRadicularPain = "back-and-radicular-pain",
        Hip = "hip",
        Knee = "knee",
        Shoulder = "shoulder",
        Hand = "hand",
        Foot = "foot",
        Inflammatory = "inflammatory",
        FallsFracture = "falls-fracture",
        Other = "other",
    }
);

code_enum!(
    /// Where a red-flag referral is redirected.
    RedirectDestination, "redirect destination" {
        /// Same-day emergency assessment (suspected cauda equina syndrome).
        EmergencyDepartment = "emergency-department",
        /// Urgent suspected-cancer route.
        UrgentSuspectedCancer = "urgent-suspected-cancer",
        /// Urgent medical assessment (suspected infection).
        UrgentMedicalAssessment = "urgent-medical-assessment",
        /// Urgent fracture assessment.
        FractureClinic = "fracture-clinic",
        /// Urgent rheumatology (suspected inflammatory arthritis).
        UrgentRheumatology = "urgent-rheumatology",
    }
);

code_enum!(
    /// How urgently a redirected referral must be seen.
    Urgency, "urgency" {
        Emergency = "emergency",
        Urgent = "urgent",
    }
);

code_enum!(
    /// STarT Back risk group.
    StartBackRisk, "STarT Back risk" {
        Low = "low",
        Medium = "medium",
        High = "high",
    }
);

code_enum!(
    /// How a patient is seen.
    ContactMode, "contact mode" {
        FaceToFace = "face-to-face",
        Telephone = "telephone",
        Video = "video",
    }
);

code_enum!(
    /// How a referral reached us.
    ReceivedVia, "received via" {
        ProcessMessage = "process-message",
        ServiceRequestCreate = "service-request-create",
        /// The patient's own web form (`/self-referral`).
        SelfReferral = "self-referral",
        /// The same questions asked by a call handler (`/self-referral/telephone`).
        Telephone = "telephone",
    }
);

impl ReceivedVia {
    /// Whether the patient referred themselves (web form or telephone): the
    /// only routes on which the NHS number may be missing.
    pub fn from_the_patient(self) -> bool {
        matches!(self, ReceivedVia::SelfReferral | ReceivedVia::Telephone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_valid_nhs_numbers_parse() {
        for n in ["9434765919", "9434765870", "943 476 5919", "4010232137"] {
            assert!(NhsNumber::parse(n).is_ok(), "{n}");
        }
        assert_eq!(
            NhsNumber::parse("943 476 5919").map(|n| n.as_str().to_owned()),
            Ok("9434765919".to_owned())
        );
    }

    #[test]
    fn bad_nhs_numbers_are_refused() {
        for n in [
            "9434765918",
            "943476591",
            "94347659190",
            "94347659a9",
            "",
            "1234567890",
        ] {
            assert!(NhsNumber::parse(n).is_err(), "{n}");
        }
    }

    #[test]
    fn nhs_number_debug_hides_the_number() {
        let n = NhsNumber::parse("9434765919").map(|n| format!("{n:?}"));
        assert_eq!(n.as_deref(), Ok("NhsNumber(***)"));
    }

    #[test]
    fn ods_codes() {
        assert!(OdsCode::parse("A81001").is_ok());
        assert!(OdsCode::parse("rr8").is_ok());
        assert!(OdsCode::parse("AB").is_err());
        assert!(OdsCode::parse("A8-1001").is_err());
    }

    #[test]
    fn code_enums_round_trip() {
        for f in RedFlag::ALL {
            assert_eq!(RedFlag::parse(f.code()), Ok(*f));
        }
        assert!(Pathway::parse("elbow").is_err());
    }

    proptest! {
        #[test]
        fn nhs_number_parse_never_panics(s in ".{0,20}") {
            let _ = NhsNumber::parse(&s);
        }

        #[test]
        fn valid_nhs_numbers_round_trip(body in proptest::collection::vec(0u32..10, 9)) {
            let sum: u32 = body.iter().enumerate().map(|(i, d)| d * (10 - i as u32)).sum();
            let check = 11 - (sum % 11);
            prop_assume!(check != 10);
            let check = if check == 11 { 0 } else { check };
            let s: String = body.iter().chain(std::iter::once(&check)).map(|d| char::from(b'0' + *d as u8)).collect();
            let parsed = NhsNumber::parse(&s);
            prop_assert_eq!(parsed.map(|n| n.as_str().to_owned()), Ok(s));
        }

        #[test]
        fn a_wrong_check_digit_is_refused(body in proptest::collection::vec(0u32..10, 9), delta in 1u32..10) {
            let sum: u32 = body.iter().enumerate().map(|(i, d)| d * (10 - i as u32)).sum();
            let check = 11 - (sum % 11);
            prop_assume!(check != 10);
            let check = if check == 11 { 0 } else { check };
            let wrong = (check + delta) % 10;
            let s: String = body.iter().chain(std::iter::once(&wrong)).map(|d| char::from(b'0' + *d as u8)).collect();
            prop_assert!(NhsNumber::parse(&s).is_err());
        }
    }
}
