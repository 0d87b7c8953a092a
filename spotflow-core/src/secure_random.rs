//! Randomness for anything secret or unguessable (tokens, keys, signatures, blob names, queue
//! ids), from the operating system's CSPRNG, and constant-time comparison of secrets. `fastrand`
//! stays for jitter only.

/// `n` random bytes from the operating system's CSPRNG. If the OS cannot provide them (no
/// entropy source at all), this panics rather than hand out a predictable secret.
pub fn bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the operating system's random number generator is unavailable");
    b
}

/// `n` random bytes as lower-case hex (`2n` characters).
pub fn hex(n: usize) -> String {
    use std::fmt::Write;
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).expect("the operating system's random number generator is unavailable");
    b.iter().fold(String::with_capacity(2 * n), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// A random (version 4) UUID, lower-case.
pub fn uuid_v4() -> String {
    let mut b = bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_look_random_and_compare_exactly() {
        let (a, b) = (hex(16), hex(16));
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        let u = uuid_v4();
        assert_eq!((u.len(), &u[14..15]), (36, "4"));
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
    }
}
