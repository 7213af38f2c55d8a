//! Realistic, varied referral message Bundles for load runs and benchmarks.
//!
//! Every Bundle starts from the canonical referral message
//! (`crates/fhir/tests/fixtures/referral-message.json`) and varies what a
//! real caseload varies: the patient (a valid NHS number with its modulus 11
//! check digit, sex, age, postcode, ethnic category), the sending practice,
//! the problem (a mix of pathways and body sites close to a community MSK
//! service's), the requested priority, red flags (about 5 % of referrals)
//! and, for back and neck pain, STarT Back answers spread over low, medium
//! and high risk. The same seed and index always give the same referral; the
//! run id keeps identifiers unique between runs against one store.
//!
//! All names, numbers and places are synthetic.

use serde_json::{Value, json};
use uuid::Uuid;

const TEMPLATE: &str = include_str!("../../crates/fhir/tests/fixtures/referral-message.json");

const SNOMED: &str = "http://snomed.info/sct";

/// Number of synthetic sending practices.
pub const PRACTICES: u64 = 60;

/// A small, fast, deterministic generator (SplitMix64). Not for secrets.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0; 0 gives 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// True with probability `percent` / 100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        let i = self.below(items.len() as u64) as usize;
        &items[i.min(items.len().saturating_sub(1))]
    }
}

/// A valid NHS number: nine digits and the modulus 11 check digit (numbers
/// whose check digit would be 10 are not issued, so they are skipped).
pub fn nhs_number(rng: &mut Rng) -> String {
    loop {
        let mut digits = [0u32; 9];
        // Issued numbers start 3..=9 (4 and 6 in England); avoid the 999 test range.
        digits[0] = 4 + (rng.below(3) as u32);
        for d in digits.iter_mut().skip(1) {
            *d = rng.below(10) as u32;
        }
        let sum: u32 = digits.iter().zip((2..=10).rev()).map(|(d, w)| d * w).sum();
        let check = match 11 - sum % 11 {
            11 => 0,
            10 => continue,
            c => c,
        };
        let mut s: String = digits
            .iter()
            .filter_map(|d| char::from_digit(*d, 10))
            .collect();
        s.extend(char::from_digit(check, 10));
        return s;
    }
}

/// A problem: reason code and optional body site (SNOMED CT).
struct Problem {
    reason: (&'static str, &'static str),
    site: Option<(&'static str, &'static str)>,
}

/// The pathway mix: (pathway, weight in percent, problems).
const MIX: &[(&str, u64, &[Problem])] = &[
    (
        "back-and-radicular-pain",
        38,
        &[
            Problem {
                reason: ("279039007", "Low back pain"),
                site: Some(("122496007", "Lumbar spine structure")),
            },
            Problem {
                reason: ("23056005", "Sciatica"),
                site: Some(("37822005", "Lumbar spine")),
            },
            Problem {
                reason: ("81680005", "Neck pain"),
                site: Some(("122494005", "Cervical spine structure")),
            },
        ],
    ),
    (
        "knee",
        18,
        &[
            Problem {
                reason: ("30989003", "Knee pain"),
                site: Some(("72696002", "Knee region structure")),
            },
            Problem {
                reason: ("239873007", "Osteoarthritis of knee"),
                site: Some(("72696002", "Knee region structure")),
            },
        ],
    ),
    (
        "shoulder",
        13,
        &[
            Problem {
                reason: ("45326000", "Shoulder pain"),
                site: Some(("16982005", "Shoulder region structure")),
            },
            Problem {
                reason: ("399269003", "Frozen shoulder"),
                site: Some(("16982005", "Shoulder region structure")),
            },
        ],
    ),
    (
        "hip",
        10,
        &[
            Problem {
                reason: ("49218002", "Hip pain"),
                site: Some(("24136001", "Hip joint structure")),
            },
            Problem {
                reason: ("239872002", "Osteoarthritis of hip"),
                site: Some(("24136001", "Hip joint structure")),
            },
        ],
    ),
    (
        "hand",
        6,
        &[
            Problem {
                reason: ("53057004", "Hand pain"),
                site: Some(("85562004", "Hand structure")),
            },
            Problem {
                reason: ("57406009", "Carpal tunnel syndrome"),
                site: Some(("85562004", "Hand structure")),
            },
        ],
    ),
    (
        "foot",
        6,
        &[
            Problem {
                reason: ("47933007", "Foot pain"),
                site: Some(("56459004", "Foot structure")),
            },
            Problem {
                reason: ("202882003", "Plantar fasciitis"),
                site: Some(("56459004", "Foot structure")),
            },
        ],
    ),
    (
        "inflammatory",
        3,
        &[
            Problem {
                reason: ("69896004", "Rheumatoid arthritis"),
                site: None,
            },
            Problem {
                reason: ("9631008", "Ankylosing spondylitis"),
                site: None,
            },
        ],
    ),
    (
        "falls-fracture",
        2,
        &[Problem {
            reason: ("64859006", "Osteoporosis"),
            site: None,
        }],
    ),
    (
        "other",
        4,
        &[Problem {
            reason: ("202855006", "Lateral epicondylitis"),
            site: Some(("127949000", "Elbow region structure")),
        }],
    ),
];

/// Red flags the shipped rules act on.
const RED_FLAGS: &[(&str, &str)] = &[
    ("saddle-anaesthesia", "Saddle anaesthesia"),
    (
        "bladder-or-bowel-dysfunction",
        "Bladder or bowel dysfunction",
    ),
    ("history-of-cancer", "History of cancer"),
    ("unexplained-weight-loss", "Unexplained weight loss"),
    ("fever-or-systemic-illness", "Fever or systemic illness"),
    ("significant-trauma", "Significant trauma"),
    ("osteoporosis-or-steroid-use", "Osteoporosis or steroid use"),
    (
        "inflammatory-morning-stiffness",
        "Inflammatory morning stiffness",
    ),
    ("persistent-joint-swelling", "Persistent joint swelling"),
];

/// Postcodes of the illustrative IMD lookup, so deciles resolve on export.
const POSTCODES: &[&str] = &[
    "LS1 5HD", "LS6 2QN", "LS17 6AA", "BD1 1HY", "BD9 4RR", "HX1 1UJ", "WF1 2EB", "HG1 1DP",
    "YO1 7HH", "S1 2HE",
];

const ETHNIC_CATEGORIES: &[&str] = &[
    "A", "A", "A", "A", "A", "A", "B", "C", "D", "E", "F", "G", "H", "J", "K", "L", "M", "N", "P",
    "R", "S", "Z",
];

const FAMILY: &[&str] = &[
    "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Khan", "Patel", "Ahmed", "Evans",
    "Thomas", "Roberts", "Walker", "Wright", "Hussain", "Green", "Hall", "Wood", "Clarke", "Lewis",
];

const GIVEN_FEMALE: &[&str] = &[
    "Olivia", "Amelia", "Isla", "Ava", "Mia", "Fatima", "Grace", "Margaret", "Susan", "Priya",
];
const GIVEN_MALE: &[&str] = &[
    "Oliver", "George", "Harry", "Mohammed", "Jack", "David", "John", "Peter", "Imran", "Arjun",
];

/// STarT Back risk the answers were drawn for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Risk {
    Low,
    Medium,
    High,
}

/// One generated referral message.
#[derive(Debug, Clone)]
pub struct Referral {
    /// The Bundle, serialised.
    pub body: Vec<u8>,
    /// The pathway the problem belongs to (the shipped rules' name).
    pub pathway: &'static str,
    /// The red flag present, if any.
    pub red_flag: Option<&'static str>,
    /// STarT Back risk of the answers, when the Bundle carries them.
    pub start_back: Option<Risk>,
    /// ODS code of the sending practice.
    pub practice: String,
}

/// Builds referral messages from the canonical one.
#[derive(Debug, Clone)]
pub struct Generator {
    template: Value,
    seed: u64,
    run: Uuid,
    practice: Option<String>,
}

fn resource_mut<'a>(bundle: &'a mut Value, resource_type: &str) -> Option<&'a mut Value> {
    bundle["entry"]
        .as_array_mut()?
        .iter_mut()
        .map(|e| &mut e["resource"])
        .find(|r| r["resourceType"] == resource_type)
}

fn coding(system: &str, (code, display): (&str, &str)) -> Value {
    json!({"coding": [{"system": system, "code": code, "display": display}]})
}

/// Nine answers with `physical` of items 1-4 and `psychosocial` of items
/// 5-9 agreed, the agreed items chosen at random.
fn answers(rng: &mut Rng, physical: u64, psychosocial: u64) -> [bool; 9] {
    let mut out = [false; 9];
    let mut choose = |range: std::ops::Range<usize>, n: u64| {
        let mut idx: Vec<usize> = range.collect();
        for k in 0..(n as usize).min(idx.len()) {
            let j = k + rng.below((idx.len() - k) as u64) as usize;
            idx.swap(k, j);
            out[idx[k]] = true;
        }
    };
    choose(0..4, physical);
    choose(4..9, psychosocial);
    out
}

fn start_back(rng: &mut Rng) -> (Risk, [bool; 9]) {
    let draw = rng.below(100);
    if draw < 50 {
        // Low: total <= 3.
        let total = rng.below(4);
        let psych = rng.below(total.min(3) + 1);
        (Risk::Low, answers(rng, total - psych, psych))
    } else if draw < 80 {
        // Medium: total >= 4, psychosocial <= 3.
        let psych = rng.below(4);
        let physical = (4u64.saturating_sub(psych)) + rng.below(psych + 1).min(4);
        (Risk::Medium, answers(rng, physical.min(4), psych))
    } else {
        // High: psychosocial >= 4.
        let psych = 4 + rng.below(2);
        let physical = rng.below(5);
        (Risk::High, answers(rng, physical, psych))
    }
}

impl Generator {
    /// A generator for one run: `seed` fixes the mix, `run` keeps the
    /// referrals' identifiers unique.
    pub fn new(seed: u64, run: Uuid) -> Result<Self, serde_json::Error> {
        Ok(Self {
            template: serde_json::from_str(TEMPLATE)?,
            seed,
            run,
            practice: None,
        })
    }

    /// Send every referral from this practice (a token names one
    /// organisation), instead of one of [`PRACTICES`] practices.
    pub fn from_practice(mut self, ods: Option<String>) -> Self {
        self.practice = ods;
        self
    }

    /// The ODS code of the `n`th synthetic practice.
    pub fn practice_code(n: u64) -> String {
        format!("A81{:03}", 1 + n % PRACTICES)
    }

    /// The `index`th referral of the run.
    pub fn referral(&self, index: u64) -> Result<Referral, serde_json::Error> {
        let mut rng = Rng::new(self.seed ^ index.wrapping_mul(0xA24B_AED4_963E_E407));
        let mut bundle = self.template.clone();
        let id = |rng: &mut Rng| Uuid::from_u64_pair(rng.next_u64(), rng.next_u64()).to_string();

        bundle["id"] = json!(id(&mut rng));
        if let Some(h) = resource_mut(&mut bundle, "MessageHeader") {
            h["id"] = json!(id(&mut rng));
        }

        let total: u64 = MIX.iter().map(|(_, w, _)| w).sum();
        let mut draw = rng.below(total);
        let (pathway, problems) = MIX
            .iter()
            .find_map(|(p, w, problems)| {
                if draw < *w {
                    Some((*p, *problems))
                } else {
                    draw -= w;
                    None
                }
            })
            .unwrap_or((MIX[0].0, MIX[0].2));
        let problem = rng.pick(problems);
        let back = pathway == "back-and-radicular-pain";
        let priority = if rng.percent(12) { "urgent" } else { "routine" };

        if let Some(sr) = resource_mut(&mut bundle, "ServiceRequest") {
            sr["identifier"] = json!([{
                "system": "https://gp.example.nhs.uk/Id/referral",
                "value": format!("LOAD-{}-{index}", self.run.simple()),
            }]);
            sr["priority"] = json!(priority);
            sr["reasonCode"] = json!([coding(SNOMED, problem.reason)]);
            match problem.site {
                Some(site) => sr["bodySite"] = json!([coding(SNOMED, site)]),
                None => {
                    if let Some(o) = sr.as_object_mut() {
                        o.remove("bodySite");
                    }
                }
            }
            sr["note"] = json!([{"text": "Synthetic referral generated for a load run."}]);
        }

        let female = rng.percent(55);
        let given = if female {
            rng.pick(GIVEN_FEMALE)
        } else {
            rng.pick(GIVEN_MALE)
        };
        let nhs = nhs_number(&mut rng);
        let birth = format!(
            "{}-{:02}-{:02}",
            1938 + rng.below(70),
            1 + rng.below(12),
            1 + rng.below(28)
        );
        let family = rng.pick(FAMILY);
        let postcode = rng.pick(POSTCODES);
        let ethnic = rng.pick(ETHNIC_CATEGORIES);
        if let Some(p) = resource_mut(&mut bundle, "Patient") {
            p["identifier"][0]["value"] = json!(nhs);
            p["name"] = json!([{"use": "official", "family": family, "given": [given]}]);
            p["gender"] = json!(if female { "female" } else { "male" });
            p["birthDate"] = json!(birth);
            p["address"][0]["postalCode"] = json!(postcode);
            p["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] = json!(ethnic);
            p["extension"][0]["valueCodeableConcept"]["coding"][0]["display"] = Value::Null;
            if let Some(c) = p["extension"][0]["valueCodeableConcept"]["coding"][0].as_object_mut()
            {
                c.remove("display");
            }
        }
        let drawn = Self::practice_code(rng.below(PRACTICES));
        let practice = self.practice.clone().unwrap_or(drawn);
        if let Some(o) = resource_mut(&mut bundle, "Organization") {
            o["identifier"][0]["value"] = json!(practice);
        }

        let red_flag = rng.percent(5).then(|| *rng.pick(RED_FLAGS));
        if let Some((code, display)) = red_flag
            && let Some(obs) = resource_mut(&mut bundle, "Observation")
        {
            obs["code"]["coding"][0]["code"] = json!(code);
            obs["code"]["coding"][0]["display"] = json!(display);
            obs["valueBoolean"] = json!(true);
        }

        let risk = if back {
            let (risk, items) = start_back(&mut rng);
            if let Some(qr) = resource_mut(&mut bundle, "QuestionnaireResponse")
                && let Some(list) = qr["item"].as_array_mut()
            {
                for (item, agreed) in list.iter_mut().zip(items) {
                    item["answer"] = json!([{"valueBoolean": agreed}]);
                }
            }
            Some(risk)
        } else {
            // STarT Back is for back and neck pain only: drop the answers.
            let qr_url = bundle["entry"].as_array().and_then(|entries| {
                entries
                    .iter()
                    .find(|e| e["resource"]["resourceType"] == "QuestionnaireResponse")
                    .and_then(|e| e["fullUrl"].as_str().map(str::to_owned))
            });
            if let Some(url) = qr_url {
                if let Some(entries) = bundle["entry"].as_array_mut() {
                    entries.retain(|e| e["fullUrl"] != url.as_str());
                }
                if let Some(sr) = resource_mut(&mut bundle, "ServiceRequest")
                    && let Some(info) = sr["supportingInfo"].as_array_mut()
                {
                    info.retain(|r| r["reference"] != url.as_str());
                }
            }
            None
        };

        Ok(Referral {
            body: serde_json::to_vec(&bundle)?,
            pathway,
            red_flag: red_flag.map(|(code, _)| code),
            start_back: risk,
            practice,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test code")]
mod tests {
    use super::*;

    #[test]
    fn nhs_numbers_pass_the_modulus_11_check() {
        let mut rng = Rng::new(7);
        for _ in 0..2000 {
            let n = nhs_number(&mut rng);
            assert!(
                mskflow_events::types::NhsNumber::parse(&n).is_ok(),
                "{n} is not a valid NHS number"
            );
        }
    }

    #[test]
    fn referrals_parse_and_the_mix_is_realistic() {
        let generator = Generator::new(42, Uuid::new_v4()).unwrap();
        let n = 2000;
        let (mut red, mut back) = (0, 0);
        let mut risks = std::collections::BTreeMap::new();
        let mut pathways = std::collections::BTreeSet::new();
        let mut nhs_numbers = std::collections::BTreeSet::new();
        for i in 0..n {
            let r = generator.referral(i).unwrap();
            let parsed = mskflow_fhir::parse_process_message(&r.body)
                .map_err(|e| format!("referral {i}: {}", e.operation_outcome()))
                .unwrap();
            nhs_numbers.insert(parsed.referral.patient.nhs_number.map(String::from));
            assert_eq!(r.red_flag.is_some(), !parsed.referral.red_flags.is_empty());
            assert_eq!(r.start_back.is_some(), parsed.referral.start_back.is_some());
            if let (Some(risk), Some(answers)) = (r.start_back, parsed.referral.start_back) {
                let scored = format!("{:?}", answers.score().risk).to_lowercase();
                assert_eq!(scored, format!("{risk:?}").to_lowercase());
                *risks.entry(scored).or_insert(0) += 1;
                back += 1;
            }
            red += usize::from(r.red_flag.is_some());
            pathways.insert(r.pathway);
        }
        // About 5 % red flags, back pain the largest group, every pathway seen.
        assert!((50..=150).contains(&red), "{red} red flags in {n}");
        assert!((600..=920).contains(&back), "{back} back referrals in {n}");
        assert_eq!(pathways.len(), MIX.len());
        assert_eq!(risks.len(), 3, "{risks:?}");
        assert!(nhs_numbers.len() > 1990);
        // Deterministic per seed and index.
        assert_eq!(
            generator.referral(5).unwrap().body,
            generator.referral(5).unwrap().body
        );
    }
}
