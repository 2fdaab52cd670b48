//! Which of a file's holders one Locate hands out: a bounded sample, so an
//! answer never outgrows a frame and no reader connects to the whole swarm.
//!
//! The sample is drawn afresh for every request, so askers get different
//! peers and the swarm stays one connected mesh rather than clusters
//! around the same few. It favours peers that hold what the asker lacks,
//! first covering the rarest of those pieces (a piece few peers hold is
//! the one an asker cannot find elsewhere), then a share of the seeds
//! (at least one in ten places, at most half while partial holders
//! remain), then the rest weighted by how much each has to give. Pure
//! but for [`seed`]: the randomness is a seed the caller supplies.

use fileshare_protocol::ids::Bitfield;
use fileshare_protocol::messages::tracker::PeerLocation;
use fileshare_protocol::messages::SessionToken;
use std::hash::{BuildHasher, Hash, Hasher};

/// Peers a Locate hands out unless `--locate-peers` says otherwise.
pub const DEFAULT_LOCATE_PEERS: usize = 50;

/// Pieces probed per request: usefulness and rarity are estimated on this
/// many of the pieces the asker lacks, so the cost stays
/// `O(holders × PROBE)` however large the file.
const PROBE: usize = 64;

/// A peer that holds nothing the asker lacks still has this weight against
/// 1 for one that holds every probed piece: it is drawn only when few
/// others are left.
const USELESS_WEIGHT: f64 = 1.0 / 1024.0;

/// A splitmix64 stream: the sample's only randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`); the bias of a modulo is negligible here.
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap_or(0)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
}

/// At most `limit` of `items`, chosen as the module says. `have` gives an
/// item's pieces; `asker` is what the asker holds, if known (a bitfield of
/// another length is ignored). With `limit` items or fewer, all of them.
pub fn sample<T>(
    items: Vec<T>,
    have: impl Fn(&T) -> &Bitfield,
    asker: Option<&Bitfield>,
    limit: usize,
    seed: u64,
) -> Vec<T> {
    if items.len() <= limit {
        return items;
    }
    let mut rng = Rng(seed);
    let picks = choose(&items, &have, asker, limit, &mut rng);
    let mut slots: Vec<Option<T>> = items.into_iter().map(Some).collect();
    picks.into_iter().filter_map(|i| slots[i].take()).collect()
}

/// Indices of the chosen items; `items.len() > limit`.
fn choose<T>(
    items: &[T],
    have: &impl Fn(&T) -> &Bitfield,
    asker: Option<&Bitfield>,
    limit: usize,
    rng: &mut Rng,
) -> Vec<usize> {
    let len = items.iter().map(|i| have(i).len()).max().unwrap_or(0);
    let asker = asker.filter(|a| a.len() == len);
    let mut lacking: Vec<u32> = (0..len)
        .filter(|&p| !asker.is_some_and(|a| a.get(p)))
        .collect();
    // A partial Fisher-Yates: the first PROBE are a uniform sample.
    let probe_len = lacking.len().min(PROBE);
    for k in 0..probe_len {
        let j = k + rng.below(lacking.len() - k);
        lacking.swap(k, j);
    }
    let probe = &lacking[..probe_len];
    let is_seed: Vec<bool> = items.iter().map(|i| have(i).is_full()).collect();
    let useful: Vec<usize> = items
        .iter()
        .map(|i| probe.iter().filter(|&&p| have(i).get(p)).count())
        .collect();
    let mut chosen = vec![false; items.len()];
    let mut picks = Vec::with_capacity(limit);
    fn take(i: usize, chosen: &mut [bool], picks: &mut Vec<usize>) {
        chosen[i] = true;
        picks.push(i);
    }

    // 1. The rarest lacking pieces, each from a partial holder.
    let mut holders_of: Vec<(usize, u64, u32)> = probe
        .iter()
        .map(|&p| {
            let n = items.iter().filter(|i| have(i).get(p)).count();
            (n, rng.next(), p)
        })
        .collect();
    holders_of.sort_unstable();
    let mut covered = vec![false; len as usize];
    for &(_, _, p) in &holders_of {
        if picks.len() >= limit / 2 {
            break;
        }
        if covered[p as usize] {
            continue;
        }
        // Reservoir-sample one partial holder of `p` not yet chosen.
        let mut found = None;
        let mut seen = 0;
        for (i, item) in items.iter().enumerate() {
            if !chosen[i] && !is_seed[i] && have(item).get(p) {
                seen += 1;
                if rng.below(seen) == 0 {
                    found = Some(i);
                }
            }
        }
        if let Some(i) = found {
            for &q in probe {
                covered[q as usize] |= have(&items[i]).get(q);
            }
            take(i, &mut chosen, &mut picks);
        }
    }

    // 2. A share of the seeds, at random.
    let seeds: Vec<usize> = (0..items.len()).filter(|&i| is_seed[i]).collect();
    let partials = items.len() - seeds.len();
    let want = seeds.len().min((limit / 10).max(1));
    let mut pool = seeds;
    for k in 0..want {
        let j = k + rng.below(pool.len() - k);
        pool.swap(k, j);
        take(pool[k], &mut chosen, &mut picks);
    }

    // 3. The rest weighted by usefulness (Efraimidis-Spirakis: the largest
    // keys u^(1/w) are a weighted sample without replacement), seeds held
    // to half the places while partial holders are left.
    let mut keyed: Vec<(f64, usize)> = (0..items.len())
        .filter(|&i| !chosen[i])
        .map(|i| {
            let w = if probe.is_empty() {
                1.0
            } else if useful[i] == 0 {
                USELESS_WEIGHT
            } else {
                useful[i] as f64 / probe.len() as f64
            };
            (rng.unit().ln() / w, i)
        })
        .collect();
    keyed.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
    let seed_cap = if partials > 0 { limit / 2 } else { limit };
    let mut seeds_in = want;
    let mut skipped = Vec::new();
    for &(_, i) in &keyed {
        if picks.len() >= limit {
            break;
        }
        if is_seed[i] && seeds_in >= seed_cap {
            skipped.push(i);
            continue;
        }
        seeds_in += usize::from(is_seed[i]);
        take(i, &mut chosen, &mut picks);
    }
    for i in skipped {
        if picks.len() >= limit {
            break;
        }
        take(i, &mut chosen, &mut picks);
    }
    picks
}

/// [`sample`] over a Locate's answer. The asker is every listed peer of
/// `user`: the pieces all of them hold, so a piece one of them lacks still
/// counts as wanted.
pub fn locations(
    peers: Vec<PeerLocation>,
    user: &str,
    limit: usize,
    seed: u64,
) -> Vec<PeerLocation> {
    let mut own = peers.iter().filter(|p| p.user == user).map(|p| &p.have);
    let asker = own.next().map(|first| {
        let mut all = first.clone();
        for other in own {
            for p in 0..all.len() {
                if !other.get(p) {
                    all.clear(p);
                }
            }
        }
        all
    });
    sample(peers, |p| &p.have, asker.as_ref(), limit, seed)
}

/// A seed no other request shares: the session mixed with the time under
/// a per-process random key.
pub fn seed(session: &SessionToken) -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    session.0.hash(&mut h);
    std::time::SystemTime::now().hash(&mut h);
    h.finish()
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn with(len: u32, pieces: impl IntoIterator<Item = u32>) -> Bitfield {
        let mut b = Bitfield::new(len);
        for p in pieces {
            b.set(p);
        }
        b
    }

    fn picked(items: &[Bitfield], asker: Option<&Bitfield>, seed: u64) -> Vec<usize> {
        let indexed: Vec<(usize, &Bitfield)> = items.iter().enumerate().collect();
        sample(indexed, |(_, b)| b, asker, DEFAULT_LOCATE_PEERS, seed)
            .into_iter()
            .map(|(i, _)| i)
            .collect()
    }

    /// `n` peers, peer i holding the 8 pieces from i mod 64.
    fn swarm(n: usize) -> Vec<Bitfield> {
        (0..n)
            .map(|i| with(64, (0..8).map(|k| ((i + k) % 64) as u32)))
            .collect()
    }

    #[test]
    fn the_sample_is_bounded_and_distinct() {
        let items = swarm(1000);
        for seed in 0..20 {
            let got = picked(&items, None, seed);
            assert_eq!(got.len(), DEFAULT_LOCATE_PEERS);
            assert_eq!(got.iter().collect::<HashSet<_>>().len(), got.len());
        }
        // Few enough: every one.
        assert_eq!(picked(&items[..50], None, 1).len(), 50);
        assert_eq!(picked(&items[..3], None, 1), vec![0, 1, 2]);
    }

    #[test]
    fn peers_with_what_the_asker_lacks_are_preferred() {
        // The asker holds pieces 0..32; half the peers hold only those.
        let asker = with(64, 0..32);
        let items: Vec<Bitfield> = (0..400)
            .map(|i| {
                if i % 2 == 0 {
                    with(64, (0..4).map(|k| ((i / 2 + k) % 32) as u32))
                } else {
                    with(64, (0..4).map(|k| 32 + ((i / 2 + k) % 32) as u32))
                }
            })
            .collect();
        // Drawn blindly, half would be useless.
        let useless: usize = (0..20)
            .map(|seed| {
                let got = picked(&items, Some(&asker), seed);
                got.iter().filter(|&&i| i % 2 == 0).count()
            })
            .sum();
        assert!(useless <= 20, "{useless} of 1000 useless");
    }

    #[test]
    fn askers_get_different_samples() {
        let items = swarm(1000);
        let a: HashSet<usize> = picked(&items, None, 1).into_iter().collect();
        let b: HashSet<usize> = picked(&items, None, 2).into_iter().collect();
        let common = a.intersection(&b).count();
        assert!(common < 25, "{common} of 50 in common");
        // Over many askers, most of the swarm is handed out.
        let all: HashSet<usize> = (0..100).flat_map(|s| picked(&items, None, s)).collect();
        assert!(all.len() > 900, "{} of 1000 ever handed out", all.len());
    }

    #[test]
    fn a_rare_piece_is_always_covered() {
        // 1000 peers hold pieces 0..40; one alone holds piece 63.
        let mut items: Vec<Bitfield> = (0..1000)
            .map(|i| with(64, (0..8).map(|k| ((i + k) % 40) as u32)))
            .collect();
        items[777] = with(64, [63]);
        let asker = with(64, 0..10);
        for seed in 0..20 {
            assert!(picked(&items, Some(&asker), seed).contains(&777));
        }
    }

    #[test]
    fn seeds_and_partial_holders_are_both_represented() {
        let seeds = |n| (0..n).map(|_| Bitfield::full(64));
        // Few seeds among many partial holders: some seeds still come.
        let mut items = swarm(1000);
        items.extend(seeds(5));
        let got = picked(&items, None, 3);
        let s = got.iter().filter(|&&i| i >= 1000).count();
        assert!((1..=5).contains(&s), "{s} seeds");
        // Many seeds, few partial holders: every partial holder comes, and
        // seeds take the rest.
        let mut items = swarm(10);
        items.extend(seeds(500));
        let got = picked(&items, None, 3);
        assert_eq!(got.len(), 50);
        assert_eq!(got.iter().filter(|&&i| i < 10).count(), 10);
    }

    #[test]
    fn an_asker_that_holds_everything_gets_a_uniform_sample() {
        let items = swarm(1000);
        let got = picked(&items, Some(&Bitfield::full(64)), 5);
        assert_eq!(got.len(), 50);
    }

    #[test]
    fn the_askers_pieces_are_what_all_its_peers_hold() {
        let loc = |user: &str, have| PeerLocation {
            peer: fileshare_protocol::PeerId([0; 16]),
            user: user.into(),
            addr: String::new(),
            have,
            reach: fileshare_protocol::messages::tracker::Reach::Unknown,
            also: Vec::new(),
        };
        // bob's two daemons hold 0..32 and 16..48: he still wants 0..16.
        let mut peers = vec![loc("bob", with(64, 0..32)), loc("bob", with(64, 16..48))];
        peers.extend((0..200).map(|_| loc("x", with(64, 16..32))));
        peers.extend((0..200).map(|_| loc("y", with(64, 0..16))));
        let got = locations(peers, "bob", 50, 9);
        let y = got.iter().filter(|p| p.user == "y").count();
        assert!(y >= 45, "{y} of 50 hold what bob lacks");
    }
}
