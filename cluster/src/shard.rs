//! Shards by subject: all images of a person live in one shard, so
//! subject-level identification is exact within a shard and the merge of the
//! shards' answers is exact.

/// The shard of `subject` among `shards`: FNV-1a (64-bit) of its UTF-8
/// bytes, modulo `shards`. Stable across builds and machines (it decides
/// where data lives): never change it for an existing gallery.
pub fn shard_of(subject: &str, shards: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in subject.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // The remainder is below `shards`, a u32.
    u32::try_from(h % u64::from(shards.max(1))).unwrap_or(0)
}

/// The name of the local gallery holding shard `shard` of `gallery` (in the
/// node's shard data directory, apart from single-node galleries).
pub fn shard_gallery(gallery: &str, shard: u32) -> String {
    format!("{gallery}-s{shard}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        // Fixed values: a change of the hash would move every subject.
        assert_eq!(shard_of("", 4), (0xcbf2_9ce4_8422_2325u64 % 4) as u32);
        assert_eq!(shard_of("a", 1), 0);
        let mut counts = [0u32; 4];
        for i in 0..4000 {
            counts[shard_of(&format!("person-{i}"), 4) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (850..1150).contains(&c)),
            "{counts:?}"
        );
        assert_eq!(shard_gallery("doors", 3), "doors-s3");
    }
}
