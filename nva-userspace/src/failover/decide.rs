//! The failover decision, as a pure function of what the daemon knows: which
//! NVA should be active given their health, the current choice, anti-flap
//! limits and operator commands. Kept free of I/O so every rule is tested.

use super::probe::Health;

/// Everything a decision depends on. Times are seconds on one clock.
pub struct Situation<'a> {
    /// Health of each NVA, in order of preference.
    pub health: &'a [Health],
    /// Index of the NVA that is (meant to be) active.
    pub active: Option<usize>,
    pub frozen: bool,
    pub now_s: f64,
    /// When the last switch happened.
    pub last_switch_s: Option<f64>,
    /// Switches within the last hour.
    pub switches_last_hour: u32,
    pub min_dwell_s: u32,
    pub preempt: bool,
    pub max_failovers_per_hour: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Nothing to do.
    Keep { reason: String },
    /// Make `to` the active NVA.
    Switch { to: usize, reason: String },
    /// Something is wrong and no switch helps or is allowed: say so loudly.
    Alert { reason: String },
}

pub fn decide(s: &Situation) -> Decision {
    let first_up = |skip: Option<usize>| {
        s.health
            .iter()
            .enumerate()
            .position(|(i, h)| *h == Health::Up && Some(i) != skip)
    };
    if s.frozen {
        return Decision::Keep {
            reason: "frozen by an operator".into(),
        };
    }
    let Some(active) = s.active else {
        // Nothing active yet: the most preferred healthy NVA.
        return match first_up(None) {
            Some(to) => Decision::Switch {
                to,
                reason: "no active NVA yet".into(),
            },
            None if s.health.contains(&Health::Unknown) => Decision::Keep {
                reason: "waiting for the first probes".into(),
            },
            None => Decision::Alert {
                reason: "no NVA is healthy: nothing to activate".into(),
            },
        };
    };
    let dwell_left = s
        .last_switch_s
        .map_or(0.0, |t| s.min_dwell_s as f64 - (s.now_s - t));
    match s.health[active] {
        Health::Up | Health::Unknown => {
            if s.preempt {
                if let Some(better) = first_up(None).filter(|b| *b < active) {
                    if dwell_left > 0.0 {
                        return Decision::Keep {
                            reason: format!("failback waits {dwell_left:.0} s of min_dwell_s"),
                        };
                    }
                    return Decision::Switch {
                        to: better,
                        reason: "preempt: a preferred NVA is healthy again".into(),
                    };
                }
            }
            Decision::Keep {
                reason: "active NVA healthy".into(),
            }
        }
        Health::Down => {
            let Some(to) = first_up(Some(active)) else {
                return Decision::Alert {
                    reason: "active NVA down and no healthy standby: no switch".into(),
                };
            };
            if dwell_left > 0.0 {
                return Decision::Alert {
                    reason: format!(
                        "active NVA down, but the last switch was less than min_dwell_s ago ({dwell_left:.0} s left)"
                    ),
                };
            }
            if s.switches_last_hour >= s.max_failovers_per_hour {
                return Decision::Alert {
                    reason: format!(
                        "active NVA down, but max_failovers_per_hour ({}) is reached",
                        s.max_failovers_per_hour
                    ),
                };
            }
            Decision::Switch {
                to,
                reason: "active NVA down".into(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Health::*;

    fn situation(health: &[Health], active: Option<usize>) -> Situation<'_> {
        Situation {
            health,
            active,
            frozen: false,
            now_s: 1000.0,
            last_switch_s: None,
            switches_last_hour: 0,
            min_dwell_s: 30,
            preempt: false,
            max_failovers_per_hour: 6,
        }
    }

    fn to(d: Decision) -> Option<usize> {
        match d {
            Decision::Switch { to, .. } => Some(to),
            _ => None,
        }
    }

    #[test]
    fn initial_choice_is_the_preferred_healthy_nva() {
        assert_eq!(to(decide(&situation(&[Up, Up], None))), Some(0));
        assert_eq!(to(decide(&situation(&[Down, Up], None))), Some(1));
        assert!(matches!(
            decide(&situation(&[Unknown, Up], None)),
            Decision::Switch { to: 1, .. }
        ));
        assert!(matches!(
            decide(&situation(&[Unknown, Unknown], None)),
            Decision::Keep { .. }
        ));
        assert!(matches!(
            decide(&situation(&[Down, Down], None)),
            Decision::Alert { .. }
        ));
    }

    #[test]
    fn failover_only_to_a_healthy_standby() {
        assert_eq!(to(decide(&situation(&[Down, Up], Some(0)))), Some(1));
        assert!(matches!(
            decide(&situation(&[Down, Down], Some(0))),
            Decision::Alert { .. }
        ));
        assert!(matches!(
            decide(&situation(&[Down, Unknown], Some(0))),
            Decision::Alert { .. }
        ));
        assert!(matches!(
            decide(&situation(&[Up, Down], Some(0))),
            Decision::Keep { .. }
        ));
    }

    #[test]
    fn anti_flap() {
        let mut s = situation(&[Down, Up], Some(0));
        s.last_switch_s = Some(990.0);
        assert!(
            matches!(decide(&s), Decision::Alert { .. }),
            "within min_dwell_s"
        );
        s.last_switch_s = Some(960.0);
        assert_eq!(to(decide(&s)), Some(1), "after min_dwell_s");
        s.switches_last_hour = 6;
        assert!(matches!(decide(&s), Decision::Alert { .. }), "hourly limit");
        // No failback without preempt; with it, after the dwell time.
        let mut s = situation(&[Up, Up], Some(1));
        assert!(matches!(decide(&s), Decision::Keep { .. }));
        s.preempt = true;
        s.last_switch_s = Some(990.0);
        assert!(matches!(decide(&s), Decision::Keep { .. }));
        s.last_switch_s = Some(900.0);
        assert_eq!(to(decide(&s)), Some(0));
        // Frozen: nothing moves.
        let mut s = situation(&[Down, Up], Some(0));
        s.frozen = true;
        assert!(matches!(decide(&s), Decision::Keep { .. }));
    }
}
