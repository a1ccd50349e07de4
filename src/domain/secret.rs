//! Comparing secrets (API keys, resume tokens) without leaking how much of them matched.

use subtle::ConstantTimeEq;

/// Compares without an early exit, so response time does not reveal how much of a secret matched
/// (`subtle`'s comparison, which the optimiser is kept from short-circuiting). Only the lengths are
/// compared openly: a secret's length is not the secret.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_identical_bytes_are_equal() {
        assert!(constant_time_eq(
            b"read-key-0123456789",
            b"read-key-0123456789"
        ));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(
            b"read-key-0123456789",
            b"read-key-0123456788"
        ));
        assert!(!constant_time_eq(
            b"read-key-0123456789",
            b"read-key-012345678"
        ));
        assert!(!constant_time_eq(b"read-key", b"read-key-0123456789"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
