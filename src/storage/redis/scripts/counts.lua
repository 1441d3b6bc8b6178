-- How many keys each pool of a device holds (KEYS: EC pool, Kyber pool), read together.
return {redis.call('LLEN', KEYS[1]), redis.call('LLEN', KEYS[2])}
