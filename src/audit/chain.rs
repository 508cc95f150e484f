//! Hash chains over events and ledger rows, and walking them.
//!
//! A record's hash is SHA-256 over the hash of its writer's previous record (64 zeros for
//! a writer's first) and its stored fields, each length-prefixed, exactly as stored: the
//! verifier recomputes it from the columns, with no canonical form to agree on.
//!
//! What a walk catches on its own: an altered record (its hash no longer matches), a
//! removed one (a gap in its writer's sequence), a reordered one (its hash matches another
//! place), an inserted one (its link does not match the record before it, or it carries
//! no link at all). What it cannot catch without heads kept outside the database (`audit heads`): the
//! newest records of a writer removed (nothing follows them), or a chain rewritten from
//! some record on by someone who recomputed every hash. Heads kept outside the database
//! pin each writer's chain up to them.

use std::collections::BTreeMap;
use std::fmt;

/// The previous hash of a writer's first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Hex SHA-256 over `prev` and `fields`, each length-prefixed (`None` apart from `""`).
pub fn hash(prev: &str, fields: &[Option<&str>]) -> String {
    // Fed piece by piece: no buffer of the whole record (this runs for every ledger row).
    let mut sha = openssl::sha::Sha256::new();
    sha.update(prev.as_bytes());
    for field in fields {
        match field {
            None => sha.update(b"N"),
            Some(text) => {
                sha.update(b"S");
                sha.update(&(text.len() as u64).to_be_bytes());
                sha.update(text.as_bytes());
            }
        }
    }
    hex(&sha.finish())
}

/// A record's hash as if it stood at each place near `seq` (within 8), for naming a reorder.
pub fn nearby(seq: i64, hash_at: impl Fn(i64) -> String) -> Vec<(i64, String)> {
    (seq - 8..=seq + 8).filter(|s| *s != seq && *s >= 1).map(|s| (s, hash_at(s))).collect()
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0x0f)]);
    }
    String::from_utf8(out).unwrap_or_default()
}

/// One stored record of a chain, as a walk sees it.
#[derive(Debug, Clone)]
pub struct Link {
    /// Its place in its writer's chain.
    pub seq: i64,
    /// The previous record's hash, as stored.
    pub prev_hash: String,
    /// Its hash, as stored.
    pub hash: String,
    /// Its hash as recomputed from its fields at its stored `seq`.
    pub computed: String,
    /// When its hash does not match: its hash recomputed as if it stood at another place
    /// (for naming a reorder), `seq` to hash, for a few places around it.
    pub elsewhere: Vec<(i64, String)>,
    /// How to name it to an operator (`ledger row jti ...`, `event ...`).
    pub label: String,
}

/// Which chains a walk covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// The events table.
    Events,
    /// The issuance ledger.
    Ledger,
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Table::Events => "events",
            Table::Ledger => "ledger",
        })
    }
}

/// What a walk found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A record's content no longer matches its hash.
    Altered { table: Table, writer: String, seq: i64, label: String },
    /// Records missing before `label`.
    Removed { table: Table, writer: String, from: i64, to: i64, before: String },
    /// A record stands at a place it was not written at.
    Reordered { table: Table, writer: String, seq: i64, written_at: i64, label: String },
    /// A record that does not link to the one before it, or carries no link.
    Inserted { table: Table, writer: String, seq: Option<i64>, label: String },
    /// A writer's newest records are gone: the checkpoint holds a later one.
    Truncated { table: Table, writer: String, last: Option<i64>, checkpoint: i64 },
    /// The record at a checkpointed head is not the one the checkpoint signed.
    HeadMismatch { table: Table, writer: String, seq: i64, label: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Altered { table, writer, seq, label } => {
                write!(f, "ALTERED {table} record {label} (writer {writer}, seq {seq}): its content does not match its hash")
            }
            Problem::Removed { table, writer, from, to, before } if from == to => {
                write!(f, "REMOVED {table} record writer {writer} seq {from}, just before {before}")
            }
            Problem::Removed { table, writer, from, to, before } => {
                write!(f, "REMOVED {table} records writer {writer} seq {from} to {to}, just before {before}")
            }
            Problem::Reordered { table, writer, seq, written_at, label } => write!(
                f,
                "REORDERED {table} record {label} (writer {writer}): it stands at seq {seq} but was written at seq {written_at}"
            ),
            Problem::Inserted { table, writer, seq: Some(seq), label } => write!(
                f,
                "INSERTED {table} record {label} (writer {writer}, seq {seq}): it does not link to the record before it"
            ),
            Problem::Inserted { table, label, .. } => {
                write!(f, "INSERTED {table} record {label}: it carries no chain link although chaining had begun")
            }
            Problem::Truncated { table, writer, last: Some(last), checkpoint } => write!(
                f,
                "TRUNCATED {table} writer {writer}: its last record is seq {last}, the checkpoint holds seq {checkpoint} (seq {} to {checkpoint} removed)",
                last + 1
            ),
            Problem::Truncated { table, writer, last: None, checkpoint } => write!(
                f,
                "TRUNCATED {table} writer {writer}: it has no records left, the checkpoint holds seq 1 to {checkpoint}"
            ),
            Problem::HeadMismatch { table, writer, seq, label } => write!(
                f,
                "ALTERED {table} record {label} (writer {writer}, seq {seq}): it is not the record the checkpoint signed \
                 (the chain was rewritten from it or before it)"
            ),
        }
    }
}

/// Where a writer's chain may start when its older records were pruned: the first kept
/// record's seq and the hash it links to, as the prune recorded them.
pub type Anchors = BTreeMap<String, (i64, String)>;

/// Per writer, rows it chained and then did not write: seq to (hash, previous hash).
pub type Withheld = BTreeMap<String, BTreeMap<i64, (String, String)>>;

/// Walks each writer's records (`chains`: by writer, in stored `seq` order) and returns
/// every problem, first the earliest of each chain. A chain starts at seq 1 from
/// [`GENESIS`], or where `anchors` says its pruned part ended. `withheld` holds, per
/// writer, rows it chained and its commit then refused (seq to their hash and previous hash).
pub fn walk(
    table: Table,
    chains: &BTreeMap<String, Vec<Link>>,
    anchors: &Anchors,
    withheld: &Withheld,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let none = BTreeMap::new();
    for (writer, links) in chains {
        let withheld = withheld.get(writer).unwrap_or(&none);
        // A prune records where each chain will start before its rows go: rows below the
        // start are what a prune cut short left, and are passed over.
        let (mut expected_seq, mut expected_prev, links) = match anchors.get(writer) {
            Some((seq, prev)) => (*seq, prev.clone(), &links[links.partition_point(|l| l.seq < *seq)..]),
            None => (1, GENESIS.to_owned(), &links[..]),
        };
        for link in links {
            // Rows chained and then refused by their commit are stepped over by the
            // hashes recorded for them.
            while link.seq > expected_seq {
                match withheld.get(&expected_seq) {
                    Some((hash, prev)) if *prev == expected_prev => {
                        expected_prev = hash.clone();
                        expected_seq += 1;
                    }
                    _ => break,
                }
            }
            if link.hash != link.computed {
                match link.elsewhere.iter().find(|(_, h)| *h == link.hash) {
                    Some((written_at, _)) => problems.push(Problem::Reordered {
                        table,
                        writer: writer.clone(),
                        seq: link.seq,
                        written_at: *written_at,
                        label: link.label.clone(),
                    }),
                    None => problems.push(Problem::Altered {
                        table,
                        writer: writer.clone(),
                        seq: link.seq,
                        label: link.label.clone(),
                    }),
                }
                break;
            }
            if link.seq > expected_seq {
                problems.push(Problem::Removed {
                    table,
                    writer: writer.clone(),
                    from: expected_seq,
                    to: link.seq - 1,
                    before: link.label.clone(),
                });
                break;
            }
            if link.prev_hash != expected_prev {
                problems.push(Problem::Inserted {
                    table,
                    writer: writer.clone(),
                    seq: Some(link.seq),
                    label: link.label.clone(),
                });
                break;
            }
            expected_seq = link.seq + 1;
            expected_prev = link.hash.clone();
        }
    }
    problems
}

/// Checks each checkpointed head against the chains: the record at the head's seq must be
/// there (unless pruned: below its writer's anchor) with the hash the checkpoint signed.
pub fn check_heads(
    table: Table,
    chains: &BTreeMap<String, Vec<Link>>,
    anchors: &Anchors,
    heads: &BTreeMap<String, (i64, String)>,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (writer, (seq, hash)) in heads {
        let links = chains.get(writer).map_or(&[][..], Vec::as_slice);
        if anchors.get(writer).is_some_and(|(first_kept, _)| seq < first_kept) {
            continue;
        }
        match links.iter().find(|l| l.seq == *seq) {
            Some(link) if link.hash == *hash => {}
            Some(link) => problems.push(Problem::HeadMismatch {
                table,
                writer: writer.clone(),
                seq: *seq,
                label: link.label.clone(),
            }),
            None => match links.last() {
                Some(last) if last.seq > *seq => problems.push(Problem::Removed {
                    table,
                    writer: writer.clone(),
                    from: *seq,
                    to: *seq,
                    before: last.label.clone(),
                }),
                last => problems.push(Problem::Truncated {
                    table,
                    writer: writer.clone(),
                    last: last.map(|l| l.seq),
                    checkpoint: *seq,
                }),
            },
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<Link> {
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|seq| {
                let text = seq.to_string();
                let h = hash(&prev, &[Some(&text)]);
                let link = Link {
                    seq,
                    prev_hash: prev.clone(),
                    hash: h.clone(),
                    computed: h.clone(),
                    elsewhere: vec![],
                    label: format!("r{seq}"),
                };
                prev = h;
                link
            })
            .collect()
    }

    fn one(links: Vec<Link>) -> Vec<Problem> {
        walk(Table::Events, &BTreeMap::from([("w".to_owned(), links)]), &Anchors::new(), &Withheld::new())
    }

    #[test]
    fn an_untouched_chain_walks_clean_and_a_gap_names_the_missing_seq() {
        assert_eq!(one(chain(5)), []);
        let mut links = chain(5);
        links.remove(2);
        let problems = one(links);
        assert!(matches!(&problems[..], [Problem::Removed { from: 3, to: 3, before, .. }] if before == "r4"));
    }

    #[test]
    fn a_chain_pruned_from_its_start_walks_clean_only_from_its_recorded_anchor() {
        let mut links = chain(5);
        let kept = links.split_off(2);
        let anchor = (3, kept[0].prev_hash.clone());
        let chains = BTreeMap::from([("w".to_owned(), kept)]);
        let anchors = Anchors::from([("w".to_owned(), anchor)]);
        assert_eq!(walk(Table::Ledger, &chains, &anchors, &Withheld::new()), []);
        let problems = walk(Table::Ledger, &chains, &Anchors::new(), &Withheld::new());
        assert!(matches!(&problems[..], [Problem::Removed { from: 1, to: 2, .. }]));
    }

    #[test]
    fn hashes_are_sha256_over_the_length_prefixed_fields_in_lowercase_hex() {
        let mut record = GENESIS.as_bytes().to_vec();
        record.extend_from_slice(b"S\0\0\0\0\0\0\0\x03abcN");
        let expected: String = openssl::sha::sha256(&record).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hash(GENESIS, &[Some("abc"), None]), expected);
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
    }

    #[test]
    fn hashes_separate_fields_and_tell_none_from_empty() {
        assert_ne!(hash(GENESIS, &[Some("ab"), Some("c")]), hash(GENESIS, &[Some("a"), Some("bc")]));
        assert_ne!(hash(GENESIS, &[None]), hash(GENESIS, &[Some("")]));
    }
}
