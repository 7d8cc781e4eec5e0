//! ISO 4217 currency codes, checked against an embedded table.
//!
//! The table is the alphabetic codes of ISO 4217 "list one" (currencies and
//! funds currently active), kept sorted so that a lookup is a binary search
//! over 3-byte arrays: no allocation, no hashing, about 8 comparisons. It is
//! embedded rather than loaded so that a currency accepted once is accepted
//! by every replica of the daemon, whatever the host's locale data.
//!
//! Keeping it current is a code change: when the ISO 4217 maintenance agency
//! publishes an amendment, edit [`CODES`] and the count in the tests. Codes
//! that were withdrawn stay out, so an order in ANG (replaced by XCG in 2025),
//! BGN (Bulgaria joined the euro in 2026), HRK, SLL, ZWL or CUC is invalid.

use std::fmt;

use super::error::ValidationError;

/// ISO 4217 list one, alphabetic codes, sorted ascending and unique
/// (the tests check both, since binary search depends on it).
static CODES: &[[u8; 3]] = &[
    *b"AED", *b"AFN", *b"ALL", *b"AMD", *b"AOA", *b"ARS", *b"AUD", *b"AWG", *b"AZN", *b"BAM",
    *b"BBD", *b"BDT", *b"BHD", *b"BIF", *b"BMD", *b"BND", *b"BOB", *b"BOV", *b"BRL", *b"BSD",
    *b"BTN", *b"BWP", *b"BYN", *b"BZD", *b"CAD", *b"CDF", *b"CHE", *b"CHF", *b"CHW", *b"CLF",
    *b"CLP", *b"CNY", *b"COP", *b"COU", *b"CRC", *b"CUP", *b"CVE", *b"CZK", *b"DJF", *b"DKK",
    *b"DOP", *b"DZD", *b"EGP", *b"ERN", *b"ETB", *b"EUR", *b"FJD", *b"FKP", *b"GBP", *b"GEL",
    *b"GHS", *b"GIP", *b"GMD", *b"GNF", *b"GTQ", *b"GYD", *b"HKD", *b"HNL", *b"HTG", *b"HUF",
    *b"IDR", *b"ILS", *b"INR", *b"IQD", *b"IRR", *b"ISK", *b"JMD", *b"JOD", *b"JPY", *b"KES",
    *b"KGS", *b"KHR", *b"KMF", *b"KPW", *b"KRW", *b"KWD", *b"KYD", *b"KZT", *b"LAK", *b"LBP",
    *b"LKR", *b"LRD", *b"LSL", *b"LYD", *b"MAD", *b"MDL", *b"MGA", *b"MKD", *b"MMK", *b"MNT",
    *b"MOP", *b"MRU", *b"MUR", *b"MVR", *b"MWK", *b"MXN", *b"MXV", *b"MYR", *b"MZN", *b"NAD",
    *b"NGN", *b"NIO", *b"NOK", *b"NPR", *b"NZD", *b"OMR", *b"PAB", *b"PEN", *b"PGK", *b"PHP",
    *b"PKR", *b"PLN", *b"PYG", *b"QAR", *b"RON", *b"RSD", *b"RUB", *b"RWF", *b"SAR", *b"SBD",
    *b"SCR", *b"SDG", *b"SEK", *b"SGD", *b"SHP", *b"SLE", *b"SOS", *b"SRD", *b"SSP", *b"STN",
    *b"SVC", *b"SYP", *b"SZL", *b"THB", *b"TJS", *b"TMT", *b"TND", *b"TOP", *b"TRY", *b"TTD",
    *b"TWD", *b"TZS", *b"UAH", *b"UGX", *b"USD", *b"USN", *b"UYI", *b"UYU", *b"UYW", *b"UZS",
    *b"VED", *b"VES", *b"VND", *b"VUV", *b"WST", *b"XAD", *b"XAF", *b"XAG", *b"XAU", *b"XBA",
    *b"XBB", *b"XBC", *b"XBD", *b"XCD", *b"XCG", *b"XDR", *b"XOF", *b"XPD", *b"XPF", *b"XPT",
    *b"XSU", *b"XTS", *b"XUA", *b"XXX", *b"YER", *b"ZAR", *b"ZMW", *b"ZWG",
];

/// An active ISO 4217 alphabetic currency code, such as `EUR`.
///
/// Only [`Currency::parse`] and [`Currency::all`] make one, so the three
/// bytes are always an upper-case code from the table.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

impl Currency {
    /// Accepts exactly an upper-case code from the table. Lower case is
    /// refused rather than folded: the contract says upper case, and a
    /// producer sending `eur` should hear about it.
    pub fn parse(code: &str) -> Result<Self, ValidationError> {
        let bytes: [u8; 3] = code
            .as_bytes()
            .try_into()
            .map_err(|_| ValidationError::Currency)?;
        match CODES.binary_search(&bytes) {
            Ok(_) => Ok(Self(bytes)),
            Err(_) => Err(ValidationError::Currency),
        }
    }

    /// The code, such as `"EUR"`. It borrows from the static table rather
    /// than from `self`, so `order.currency().as_str()` outlives the
    /// temporary `Currency` (a binary search of 8 steps pays for that).
    pub fn as_str(&self) -> &'static str {
        // Every `Currency` holds a table entry, so the "XXX" fallback is never
        // taken; it only keeps the function total without a panic path.
        CODES
            .binary_search(&self.0)
            .ok()
            .and_then(|index| CODES.get(index))
            .and_then(|code| std::str::from_utf8(code).ok())
            .unwrap_or("XXX")
    }

    /// Every accepted currency, in code order (for generators and tools).
    pub fn all() -> impl ExactSizeIterator<Item = Currency> {
        CODES.iter().map(|code| Currency(*code))
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Currency").field(&self.as_str()).finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_unique_and_upper_case() {
        assert!(CODES.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(CODES.iter().flatten().all(u8::is_ascii_uppercase));
        assert_eq!(CODES.len(), 178);
        assert_eq!(Currency::all().len(), CODES.len());
    }

    #[test]
    fn every_table_entry_parses_back() {
        for currency in Currency::all() {
            assert_eq!(Currency::parse(currency.as_str()), Ok(currency));
        }
    }

    #[test]
    fn accepts_active_codes() {
        for code in [
            "EUR", "USD", "JPY", "GBP", "CHF", "AED", "XCG", "ZWG", "SLE",
        ] {
            let currency = Currency::parse(code).unwrap();
            assert_eq!(currency.as_str(), code);
            assert_eq!(currency.to_string(), code);
        }
        assert_eq!(
            format!("{:?}", Currency::parse("EUR").unwrap()),
            "Currency(\"EUR\")"
        );
    }

    #[test]
    fn refuses_lower_case_unknown_withdrawn_and_wrong_length() {
        for code in [
            "eur", "Eur", "XYZ", "ANG", "BGN", "HRK", "SLL", "ZWL", "CUC", "", "EU", "EURO", "E€",
            "€UR",
        ] {
            assert_eq!(
                Currency::parse(code),
                Err(ValidationError::Currency),
                "{code}"
            );
        }
    }
}
