-- KEYS: 1 state. ARGV: 1 now. Reply: {now, requests bucket, tokens_rate
-- bucket} ("" when never used). It changes nothing.
return {now_us(), redis.call('HGET', KEYS[1], 't0') or '', redis.call('HGET', KEYS[1], 't1') or ''}
