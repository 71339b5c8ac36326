//! Redis sink memory (Tier 2+), shared by every API instance:
//!
//! - `appstrate:sink:<run>:seen:<webhook-id>` — `SET NX PX <window>`: a `webhook-id` already accepted;
//! - `appstrate:sink:<run>:buffer` — a sorted set of buffered events scored by sequence (expires
//!   [`BUFFER_TTL`](super::BUFFER_TTL) after the last write);
//! - `appstrate:sink:<run>:lock` — `SET NX PX` with a random token, released by compare-and-delete.
//!
//! Buffer updates are Lua scripts, so the cap check, the replacement and the removal are atomic.

use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use redis::Script;

use super::{SinkLock, SinkMemory, BUFFER_TTL, LOCK_TTL, LOCK_WAIT};
use crate::infra::redis_client::Redis;

const BUFFER: &str = r"
local same = redis.call('ZCOUNT', KEYS[1], ARGV[1], ARGV[1])
if same == 0 and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
";

const TAKE: &str = r"
local found = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then
  return false
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[1])
return found[1]
";

const TAKE_ALL: &str = r"
local all = redis.call('ZRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
return all
";

const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

pub struct RedisSinkMemory {
    redis: Redis,
    buffer: Script,
    take: Script,
    take_all: Script,
}

impl RedisSinkMemory {
    pub fn new(redis: Redis) -> Self {
        Self {
            redis,
            buffer: Script::new(BUFFER),
            take: Script::new(TAKE),
            take_all: Script::new(TAKE_ALL),
        }
    }
}

fn key(run_id: &str, what: &str) -> String {
    format!("appstrate:sink:{run_id}:{what}")
}

/// A held Redis lock: its key and the token that proves ownership.
pub(super) struct RedisLock {
    redis: Redis,
    key: String,
    token: String,
}

impl RedisLock {
    pub(super) async fn release(self) {
        let mut conn = self.redis.conn();
        let r: redis::RedisResult<i64> = Script::new(UNLOCK)
            .key(&self.key)
            .arg(&self.token)
            .invoke_async(&mut conn)
            .await;
        if let Err(e) = r {
            // The lock expires on its own after LOCK_TTL.
            tracing::warn!(error = %e, "could not release a run's event lock");
        }
    }
}

#[async_trait]
impl SinkMemory for RedisSinkMemory {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn seen(&self, run_id: &str, webhook_id: &str) -> anyhow::Result<bool> {
        let mut conn = self.redis.conn();
        let n: i64 = redis::cmd("EXISTS")
            .arg(key(run_id, &format!("seen:{webhook_id}")))
            .query_async(&mut conn)
            .await?;
        Ok(n > 0)
    }

    async fn remember(
        &self,
        run_id: &str,
        webhook_id: &str,
        window: Duration,
    ) -> anyhow::Result<()> {
        let mut conn = self.redis.conn();
        let _: Option<String> = redis::cmd("SET")
            .arg(key(run_id, &format!("seen:{webhook_id}")))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(window.as_millis().max(1) as u64)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn buffer(
        &self,
        run_id: &str,
        sequence: i64,
        event: &str,
        max: usize,
    ) -> anyhow::Result<bool> {
        let mut conn = self.redis.conn();
        let stored: i64 = self
            .buffer
            .key(key(run_id, "buffer"))
            .arg(sequence)
            .arg(event)
            .arg(max)
            .arg(BUFFER_TTL.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(stored == 1)
    }

    async fn take(&self, run_id: &str, sequence: i64) -> anyhow::Result<Option<String>> {
        let mut conn = self.redis.conn();
        Ok(self
            .take
            .key(key(run_id, "buffer"))
            .arg(sequence)
            .invoke_async(&mut conn)
            .await?)
    }

    async fn take_all(&self, run_id: &str) -> anyhow::Result<Vec<String>> {
        let mut conn = self.redis.conn();
        Ok(self
            .take_all
            .key(key(run_id, "buffer"))
            .invoke_async(&mut conn)
            .await?)
    }

    async fn lock(&self, run_id: &str) -> anyhow::Result<SinkLock> {
        let key = key(run_id, "lock");
        let token = format!("{:032x}", rand::thread_rng().gen::<u128>());
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        let mut pause = Duration::from_millis(5);
        loop {
            let mut conn = self.redis.conn();
            let got: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(LOCK_TTL.as_millis() as u64)
                .query_async(&mut conn)
                .await?;
            if got.is_some() {
                return Ok(SinkLock::redis(RedisLock {
                    redis: self.redis.clone(),
                    key,
                    token,
                }));
            }
            if tokio::time::Instant::now() + pause > deadline {
                anyhow::bail!("timed out waiting for the run's event lock");
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}
