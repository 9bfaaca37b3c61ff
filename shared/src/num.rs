//! Conversions between number types that saturate instead of wrapping or truncating.
//!
//! Amounts come from clients (`max_tokens`, `max-age`), clocks and stores (SQLite and
//! DynamoDB hold signed 64-bit numbers), and a plain `as` between them can wrap: a `u64`
//! expiry past `i64::MAX` became a negative time in SQLite, dead there while alive
//! elsewhere. The workspace denies the lossy casts (`cast_possible_wrap`, `cast_sign_loss`,
//! `cast_possible_truncation`); these are the conversions to use instead, each with the one
//! meaning that is safe: the nearest representable value.

/// `u64` as `i64`, at most `i64::MAX`.
pub fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `i64` as `u64`, at least 0 (a negative stored value is corrupt or from an old clock).
pub fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// `u128` as `u64`, at most `u64::MAX`.
pub fn u128_to_u64(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// `i64` as `u32`, clamped to `0..=u32::MAX`.
pub fn to_u32(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

/// `i64` as `u16`, clamped to `0..=u16::MAX`.
pub fn to_u16(v: i64) -> u16 {
    u16::try_from(v.max(0)).unwrap_or(u16::MAX)
}

/// `usize` as `u32`, at most `u32::MAX`.
pub fn usize_to_u32(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// A float as `u64`: rounded toward zero, negative and NaN as 0, too large as `u64::MAX`
/// (what Rust's float-to-integer `as` is defined to do; this is its one allowed use).
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub fn f64_to_u64(v: f64) -> u64 {
    v as u64
}

/// A float as `i64`: rounded toward zero, NaN as 0, saturating at the ends.
#[allow(clippy::cast_possible_truncation)]
pub fn f64_to_i64(v: f64) -> i64 {
    v as i64
}

/// A float as `i128` (whole floats up to 2^64 are exact in it), saturating at the ends.
#[allow(clippy::cast_possible_truncation)]
pub fn f64_to_i128(v: f64) -> i128 {
    v as i128
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_saturate() {
        assert_eq!(to_i64(u64::MAX), i64::MAX);
        assert_eq!(to_i64(5), 5);
        assert_eq!(to_u64(-1), 0);
        assert_eq!(to_u32(i64::MAX), u32::MAX);
        assert_eq!(to_u16(-3), 0);
        assert_eq!(f64_to_u64(-1.5), 0);
        assert_eq!(f64_to_u64(f64::NAN), 0);
        assert_eq!(f64_to_u64(1e30), u64::MAX);
        assert_eq!(f64_to_u64(2.9), 2);
        assert_eq!(u128_to_u64(u128::MAX), u64::MAX);
    }
}
