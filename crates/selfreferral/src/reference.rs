//! The reference number a person is given: `MSK-` and eight characters of
//! Crockford's base 32 (no I, L, O or U, so it reads back over the phone),
//! derived from the form's idempotency key, so a repeated submission of the
//! same form gets the same reference.

use std::fmt;

use uuid::Uuid;

/// Namespace of references (UUIDv5 of the idempotency key). Never change it.
const NAMESPACE: Uuid = Uuid::from_u128(0x5e1f_2b0c_91d4_4c3e_8a6f_27d1_e0b4_9c35);
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A self-referral's reference number.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference(String);

impl Reference {
    /// The reference of the form with this idempotency key.
    pub fn of_key(key: Uuid) -> Self {
        let hash = Uuid::new_v5(&NAMESPACE, key.as_bytes()).as_u128();
        let chars: String = (0..8)
            .map(|i| char::from(ALPHABET[((hash >> (5 * i)) & 31) as usize]))
            .collect();
        Reference(format!("MSK-{}-{}", &chars[..4], &chars[4..]))
    }

    /// Parse a reference as typed: case, spaces and dashes are forgiven, and
    /// the look-alike letters O, I and L read as 0, 1 and 1.
    pub fn parse(input: &str) -> Option<Self> {
        let cleaned: String = input
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .map(|c| match c.to_ascii_uppercase() {
                'O' => '0',
                'I' | 'L' => '1',
                c => c,
            })
            .collect();
        let body = cleaned.strip_prefix("MSK").unwrap_or(&cleaned);
        (body.len() == 8 && body.bytes().all(|b| ALPHABET.contains(&b)))
            .then(|| Reference(format!("MSK-{}-{}", &body[..4], &body[4..])))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
