//! A byte-level mutator with a grammar dictionary: the strategies of AFL's havoc stage (flips,
//! interesting numbers, cuts, duplications, splices between seeds) plus dictionary tokens, stacked
//! one to eight deep.

/// Numbers that break size arithmetic and range checks.
const INTERESTING_NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "255",
    "256",
    "65535",
    "65536",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "9007199254740993",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "1e308",
    "1e309",
    "-1e309",
    "0.0000001",
    "NaN",
    "inf",
    "-0",
];

/// Bytes that end or confuse tokens in text formats.
const SPECIAL_BYTES: &[u8] = b"\0\r\n\t \"'\\{}[]:,=#/.-+";

/// A seeded mutator.
pub struct Mutator {
    rng: fastrand::Rng,
    dictionary: &'static [&'static str],
    /// Largest input it makes, bytes (dictionary splices and duplications stop growing past it).
    pub max_len: usize,
}

impl Mutator {
    /// A mutator drawing from `seed`, splicing `dictionary` tokens.
    pub fn new(seed: u64, dictionary: &'static [&'static str]) -> Self {
        Mutator {
            rng: fastrand::Rng::with_seed(seed),
            dictionary,
            max_len: 64 * 1024,
        }
    }

    /// One mutated input: a random seed, mutated one to eight times.
    pub fn mutate(&mut self, seeds: &[Vec<u8>]) -> Vec<u8> {
        let mut input = seeds[self.rng.usize(..seeds.len())].clone();
        let rounds = 1 << self.rng.u32(0..4);
        for _ in 0..self.rng.usize(1..=rounds) {
            self.mutate_once(&mut input, seeds);
        }
        input.truncate(self.max_len);
        input
    }

    fn mutate_once(&mut self, b: &mut Vec<u8>, seeds: &[Vec<u8>]) {
        let len = b.len();
        let at = if len == 0 { 0 } else { self.rng.usize(..len) };
        match self.rng.u8(..13) {
            // A bit flipped.
            0 if len > 0 => b[at] ^= 1 << self.rng.u8(..8),
            // A random byte.
            1 if len > 0 => b[at] = self.rng.u8(..),
            // A special byte, overwritten or inserted.
            2 if len > 0 => b[at] = SPECIAL_BYTES[self.rng.usize(..SPECIAL_BYTES.len())],
            3 => b.insert(at, SPECIAL_BYTES[self.rng.usize(..SPECIAL_BYTES.len())]),
            // Cut the tail.
            4 => b.truncate(at),
            // A range deleted.
            5 if len > 0 => {
                let end = (at + self.rng.usize(1..=32)).min(len);
                b.drain(at..end);
            }
            // A range duplicated in place.
            6 if len > 0 && len < self.max_len => {
                let end = (at + self.rng.usize(1..=64)).min(len);
                let copy = b[at..end].to_vec();
                b.splice(at..at, copy);
            }
            // A dictionary token inserted, or replacing what is there.
            7 | 8 if !self.dictionary.is_empty() => {
                let token = self.dictionary[self.rng.usize(..self.dictionary.len())].as_bytes();
                if self.rng.bool() || len == 0 {
                    b.splice(at..at, token.iter().copied());
                } else {
                    let end = (at + token.len()).min(len);
                    b.splice(at..end, token.iter().copied());
                }
            }
            // The number under the cursor replaced by an interesting one.
            9 => {
                let (start, end) = digits_around(b, at);
                let n = INTERESTING_NUMBERS[self.rng.usize(..INTERESTING_NUMBERS.len())];
                b.splice(start..end, n.bytes());
            }
            // Splice with another seed: our head, its tail.
            10 => {
                let other = &seeds[self.rng.usize(..seeds.len())];
                if !other.is_empty() {
                    let from = self.rng.usize(..other.len());
                    b.truncate(at);
                    b.extend_from_slice(&other[from..]);
                }
            }
            // Deep nesting (recursion limits).
            11 => {
                let open = if self.rng.bool() { b'[' } else { b'{' };
                let depth = self.rng.usize(1..=300);
                b.splice(at..at, std::iter::repeat_n(open, depth));
            }
            // A long run of one byte (length limits).
            _ => {
                let byte = if self.rng.bool() {
                    self.rng.alphanumeric() as u8
                } else {
                    self.rng.u8(..)
                };
                let n = self.rng.usize(1..=4096);
                b.splice(at..at, std::iter::repeat_n(byte, n));
            }
        }
    }
}

/// The run of ASCII digits (with a leading minus) around `at`; an empty range at `at` if none.
fn digits_around(b: &[u8], at: usize) -> (usize, usize) {
    if b.is_empty() {
        return (0, 0);
    }
    let at = at.min(b.len() - 1);
    if !b[at].is_ascii_digit() {
        return (at, at);
    }
    let mut start = at;
    while start > 0 && (b[start - 1].is_ascii_digit() || b[start - 1] == b'.') {
        start -= 1;
    }
    if start > 0 && b[start - 1] == b'-' {
        start -= 1;
    }
    let mut end = at;
    while end < b.len() && (b[end].is_ascii_digit() || b[end] == b'.') {
        end += 1;
    }
    (start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_found_whole() {
        assert_eq!(digits_around(b"w: -640\n", 4), (3, 7));
        assert_eq!(digits_around(b"1.5", 0), (0, 3));
        assert_eq!(digits_around(b"abc", 1), (1, 1));
    }

    #[test]
    fn the_same_seed_makes_the_same_inputs() {
        let seeds = vec![b"{\"a\": 1}".to_vec()];
        let a: Vec<Vec<u8>> = {
            let mut m = Mutator::new(7, &["null"]);
            (0..100).map(|_| m.mutate(&seeds)).collect()
        };
        let mut m = Mutator::new(7, &["null"]);
        let b: Vec<Vec<u8>> = (0..100).map(|_| m.mutate(&seeds)).collect();
        assert_eq!(a, b);
        assert!(a.iter().any(|x| x != &seeds[0]), "mutations change inputs");
    }
}
