local lost = {}
for i = 1, #KEYS do
  if not redis.call('SET', KEYS[i], ARGV[i + 1], 'NX', 'EX', ARGV[1]) then
    lost[#lost + 1] = i
  end
end
return lost
