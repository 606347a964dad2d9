//! The request mix of a benchmark: which kinds of request, in what proportion. Written as
//! `small=80,list=10,watch=5,upload=5`; a kind left out is not sent.

use std::fmt;

/// One kind of request the benchmark sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A small GET (an object, `/version`): latency.
    Small,
    /// A large GET (a big list): throughput.
    List,
    /// A watch: the time until its first event arrives.
    Watch,
    /// A POST with a body of `--upload-size` bytes.
    Upload,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Small, Kind::List, Kind::Watch, Kind::Upload];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Small => "small",
            Kind::List => "list",
            Kind::Watch => "watch",
            Kind::Upload => "upload",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Kinds with their weights (all positive, at least one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    weights: Vec<(Kind, u32)>,
    total: u32,
}

impl Mix {
    /// Parses `kind=weight,...`; the error names the part that is wrong.
    pub fn parse(text: &str) -> Result<Mix, String> {
        let mut weights: Vec<(Kind, u32)> = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part.split_once('=').unwrap_or((part, "1"));
            let kind = Kind::ALL.into_iter().find(|k| k.name() == name.trim()).ok_or_else(|| {
                format!("{part:?}: unknown request kind {:?} (known: small, list, watch, upload)", name.trim())
            })?;
            let weight: u32 =
                weight.trim().parse().map_err(|_| format!("{part:?}: the weight must be a whole number"))?;
            if weights.iter().any(|(k, _)| *k == kind) {
                return Err(format!("{part:?}: {kind} is given twice"));
            }
            if weight > 0 {
                weights.push((kind, weight));
            }
        }
        let total =
            weights.iter().try_fold(0u32, |sum, (_, w)| sum.checked_add(*w)).ok_or("the weights are too large")?;
        if total == 0 {
            return Err(format!("{text:?}: no request kind with a weight above 0 (e.g. small=80,list=20)"));
        }
        Ok(Mix { weights, total })
    }

    /// The kind for a uniform draw `r` in `0..total()`.
    pub fn pick(&self, r: u32) -> Kind {
        let mut r = r % self.total;
        for (kind, weight) in &self.weights {
            if r < *weight {
                return *kind;
            }
            r -= weight;
        }
        unreachable!("r < total")
    }

    pub fn total(&self) -> u32 {
        self.total
    }

    pub fn kinds(&self) -> impl Iterator<Item = Kind> + '_ {
        self.weights.iter().map(|(k, _)| *k)
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.weights.iter().map(|(k, w)| format!("{k}={w}")).collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mixes_parse_and_errors_name_the_part() {
        let mix = Mix::parse("small=80, list=10,watch=5,upload=5").unwrap();
        assert_eq!(mix.total(), 100);
        assert_eq!(mix.pick(0), Kind::Small);
        assert_eq!(mix.pick(85), Kind::List);
        assert_eq!(mix.pick(99), Kind::Upload);
        assert_eq!(Mix::parse("small").unwrap().to_string(), "small=1");
        assert!(Mix::parse("lsit=3").unwrap_err().contains(r#"unknown request kind "lsit""#));
        assert!(Mix::parse("small=x").unwrap_err().contains(r#""small=x": the weight"#));
        assert!(Mix::parse("small=0").unwrap_err().contains("no request kind"));
        assert!(Mix::parse("small=1,small=2").unwrap_err().contains("given twice"));
    }

    proptest! {
        #[test]
        fn picks_follow_the_weights(weights in proptest::collection::vec(0u32..50, 4)) {
            let text: Vec<String> = Kind::ALL.iter().zip(&weights).map(|(k, w)| format!("{k}={w}")).collect();
            match Mix::parse(&text.join(",")) {
                Err(_) => prop_assert!(weights.iter().all(|w| *w == 0)),
                Ok(mix) => {
                    prop_assert_eq!(mix.total(), weights.iter().sum::<u32>());
                    for (kind, weight) in Kind::ALL.iter().zip(&weights) {
                        let count = (0..mix.total()).filter(|r| mix.pick(*r) == *kind).count() as u32;
                        prop_assert_eq!(count, *weight);
                    }
                    prop_assert_eq!(Mix::parse(&mix.to_string()).unwrap(), mix);
                }
            }
        }

        #[test]
        fn any_text_parses_or_says_why(text in "\\PC{0,30}") {
            if let Err(message) = Mix::parse(&text) {
                prop_assert!(!message.is_empty());
            }
        }
    }
}
