//! `tether link`: an emulated bad link for tests and benchmarks (root).

use std::time::Duration;

use clap::Args;

use crate::link::{LinkConfig, shaper::Impairment};

#[derive(Args)]
pub struct LinkArgs {
    /// The network namespace to create; the stub runs in it (`ip netns exec NAME tether stub`).
    #[arg(long)]
    name: String,
    /// Picks the subnets 10.201.N.0/24 (lossy) and 10.202.N.0/24 (clean), 1 to 254.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=254))]
    index: u8,
    /// Packets lost at random in each direction, in percent.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// One-way delay (RTT is twice this).
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    delay: Duration,
    /// Each packet's delay varies by up to this much either way.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    jitter: Duration,
    /// Rate limit per direction, e.g. 100mbit; 0: none.
    #[arg(long, default_value = "0", value_parser = crate::link::parse_rate)]
    rate: u64,
    /// Seed of the loss and jitter: the same seed gives the same link.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Packets queued per direction before new ones are dropped.
    #[arg(long, default_value_t = 1000)]
    queue_limit: usize,
    /// Take the link down after this long.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    lifetime: Duration,
}

impl LinkArgs {
    /// Brings the link up and keeps it until SIGINT, SIGTERM or the end of `--lifetime`.
    pub async fn run(self) -> anyhow::Result<()> {
        if !(0.0..=100.0).contains(&self.loss) {
            anyhow::bail!("--loss {} is not a percentage (0 to 100)", self.loss);
        }
        let config = LinkConfig {
            name: self.name,
            index: self.index,
            impairment: Impairment {
                loss_percent: self.loss,
                delay: self.delay,
                jitter: self.jitter,
                rate_bps: Some(self.rate).filter(|r| *r > 0),
            },
            seed: self.seed,
            queue_limit: self.queue_limit,
            lifetime: self.lifetime,
        };
        crate::link::run(config, crate::shutdown::signal()).await
    }
}
