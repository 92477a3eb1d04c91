//! IP prefixes as config files write them.

use std::net::IpAddr;

/// `addr` with the host bits of a `/len` prefix cleared. `len` must fit
/// the family (at most 32 or 128).
pub fn network(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & mask).into())
        }
    }
}

fn max_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

/// Parses a network prefix, "10.0.0.0/8" or "2001:db8::/32", or a bare
/// address (a host prefix), into its address and length. Host bits must be
/// clear: "10.0.0.1/24" is refused with "did you mean 10.0.0.0/24?".
pub fn parse_prefix(s: &str) -> Result<(IpAddr, u8), String> {
    let t = s.trim();
    let (addr_s, len_s) = match t.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (t, None),
    };
    let addr: IpAddr = addr_s
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address or CIDR prefix"))?;
    let max = max_len(addr);
    let len = match len_s {
        None => max,
        Some(l) => match l.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => {
                let fam = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
                return Err(format!(
                    "prefix length /{l} in {s:?} is out of range for {fam} (0 to {max})"
                ));
            }
        },
    };
    let net = network(addr, len);
    if net != addr {
        return Err(format!("{t} has host bits set; did you mean {net}/{len}?"));
    }
    Ok((addr, len))
}

/// Parses an interface address with its prefix length, "10.10.0.100/24"
/// (host bits are the point here); the length is required.
pub fn parse_addr_with_len(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = s.split_once('/').unwrap_or((s, ""));
    match (addr.parse::<IpAddr>(), len.parse::<u8>()) {
        (Ok(a), Ok(l)) if l <= max_len(a) => Some((a, l)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks() {
        assert_eq!(network(ip("10.1.2.3"), 8), ip("10.0.0.0"));
        assert_eq!(network(ip("10.1.2.3"), 0), ip("0.0.0.0"));
        assert_eq!(network(ip("10.1.2.3"), 32), ip("10.1.2.3"));
        assert_eq!(network(ip("2001:db8::1"), 32), ip("2001:db8::"));
        assert_eq!(network(ip("2001:db8::1"), 0), ip("::"));
        assert_eq!(network(ip("2001:db8::1"), 128), ip("2001:db8::1"));
    }

    #[test]
    fn prefixes() {
        assert_eq!(parse_prefix(" 10.0.0.0/8 "), Ok((ip("10.0.0.0"), 8)));
        assert_eq!(parse_prefix("10.0.0.1"), Ok((ip("10.0.0.1"), 32)));
        assert_eq!(parse_prefix("::1"), Ok((ip("::1"), 128)));
        assert_eq!(
            parse_prefix("10.0.0.1/24").unwrap_err(),
            "10.0.0.1/24 has host bits set; did you mean 10.0.0.0/24?"
        );
        assert_eq!(
            parse_prefix("::/129").unwrap_err(),
            "prefix length /129 in \"::/129\" is out of range for IPv6 (0 to 128)"
        );
        assert_eq!(
            parse_prefix("10.0.0.300").unwrap_err(),
            "\"10.0.0.300\" is not an IP address or CIDR prefix"
        );
    }

    #[test]
    fn addresses_with_length() {
        assert_eq!(
            parse_addr_with_len("10.0.0.1/24"),
            Some((ip("10.0.0.1"), 24))
        );
        assert_eq!(
            parse_addr_with_len("2001:db8::1/64"),
            Some((ip("2001:db8::1"), 64))
        );
        assert_eq!(parse_addr_with_len("10.0.0.1"), None);
        assert_eq!(parse_addr_with_len("10.0.0.1/33"), None);
    }
}
