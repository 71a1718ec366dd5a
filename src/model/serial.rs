//! SOA serials: they only grow, in RFC 1982 arithmetic.

use std::time::{SystemTime, UNIX_EPOCH};

/// The serial after `previous`: the current Unix time, or one more than the
/// previous serial when changes come faster than once a second, so it only
/// grows while the server runs, and after a restart unless a long burst of
/// changes had run ahead of the clock (RFC 1982 arithmetic allows the wrap).
pub fn next(previous: Option<u32>) -> u32 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1);
    match previous {
        Some(p) if p.wrapping_sub(now) as i32 >= 0 => p.wrapping_add(1),
        _ => now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_grow_even_within_one_second() {
        let a = next(None);
        let b = next(Some(a));
        let c = next(Some(b));
        assert!(b > a && c > b);
    }
}
