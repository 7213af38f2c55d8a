//! Who may use the service: age 16 and over, registered with a GP practice
//! in the area (a configurable list of ODS codes).

use chrono::{Datelike, NaiveDate};
use mskflow_events::OdsCode;

use crate::Error;

/// A GP practice of the area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Practice {
    pub ods: OdsCode,
    pub name: String,
}

/// The area the service covers (*configurable*).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Area {
    /// Shown to people: "for people registered with a GP practice in {name}".
    pub name: String,
    pub practices: Vec<Practice>,
    /// Youngest age served (16: children are seen by paediatric services).
    pub min_age: u32,
}

/// Whether a person may use the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Eligibility {
    Eligible(Practice),
    /// Under the minimum age.
    TooYoung {
        min_age: u32,
    },
    /// Not registered with a practice of the area.
    OutOfArea,
}

impl Area {
    /// An area from `(ODS code, practice name)` pairs.
    pub fn new(name: &str, practices: &[(String, String)], min_age: u32) -> Result<Self, Error> {
        let practices = practices
            .iter()
            .map(|(code, name)| {
                OdsCode::parse(code)
                    .map(|ods| Practice {
                        ods,
                        name: name.clone(),
                    })
                    .map_err(|source| Error::Practice {
                        code: code.clone(),
                        source,
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            name: name.to_owned(),
            practices,
            min_age,
        })
    }

    /// The practice with this ODS code (any case), if it is in the area.
    pub fn practice(&self, code: &str) -> Option<&Practice> {
        let code = code.trim().to_ascii_uppercase();
        self.practices.iter().find(|p| p.ods.as_str() == code)
    }

    /// Decide eligibility on `today`.
    pub fn eligibility(
        &self,
        birth_date: NaiveDate,
        practice: &str,
        today: NaiveDate,
    ) -> Eligibility {
        if age_on(birth_date, today) < self.min_age {
            return Eligibility::TooYoung {
                min_age: self.min_age,
            };
        }
        match self.practice(practice) {
            Some(p) => Eligibility::Eligible(p.clone()),
            None => Eligibility::OutOfArea,
        }
    }
}

/// Age in whole years on `day` (0 for a birth date after it).
pub fn age_on(birth_date: NaiveDate, day: NaiveDate) -> u32 {
    let mut years = day.year() - birth_date.year();
    if (day.month(), day.day()) < (birth_date.month(), birth_date.day()) {
        years -= 1;
    }
    u32::try_from(years).unwrap_or(0)
}
