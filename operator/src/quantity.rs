//! Kubernetes quantities compared by value, not by spelling: the API server stores `1024Mi` as
//! `1Gi` and `0.5` as `500m`, so a string comparison would see a change on every reconcile.

use std::cmp::Ordering;

use kube_quantity::ParsedQuantity;

/// The quantity `s` spells, or `None` when it is not one.
pub fn parse(s: &str) -> Option<ParsedQuantity> {
    let s = s.trim();
    // The parser stops at the first character it does not understand; a quantity is only what
    // round-trips in full, so reject trailing text ourselves.
    if s.is_empty()
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return None;
    }
    ParsedQuantity::try_from(s).ok()
}

/// Orders two quantities by value; `None` when either is not a quantity.
pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    Some(parse(a)?.cmp(&parse(b)?))
}

/// Whether two spellings name the same quantity (`1024Mi` and `1Gi`; `0.5` and `500m`).
pub fn same(a: &str, b: &str) -> bool {
    a == b || compare(a, b) == Some(Ordering::Equal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_quantities_in_other_spellings_are_the_same() {
        for (a, b) in [
            ("1024Mi", "1Gi"),
            ("0.5", "500m"),
            ("1", "1000m"),
            ("1Gi", "1073741824"),
            ("1k", "1000"),
            ("2Gi", "2Gi"),
        ] {
            assert!(same(a, b), "{a} == {b}");
        }
        for (a, b) in [("1Gi", "1G"), ("2Gi", "1Gi"), ("500m", "0.6"), ("1Gi", "x")] {
            assert!(!same(a, b), "{a} != {b}");
        }
        assert_eq!(compare("1500Mi", "2Gi"), Some(Ordering::Less));
        assert_eq!(compare("3Gi", "2048Mi"), Some(Ordering::Greater));
        assert_eq!(compare("1Gi", "1Gi and more"), None);
    }
}
