local hs = observed(obj)
if hs ~= nil then return hs end
local s = obj.status
local phase = s.phase
if phase == "Suspended" then
  return {status = "Suspended", message = explain(s, "Suspended: no new runs start")}
elseif phase == "Failed" then
  return {status = "Degraded", message = explain(s, "The schedule cannot run")}
elseif phase == "Idle" or phase == "Running" then
  -- like a CronJob: healthy between runs and while one runs; the latest finished run failing is Degraded
  local last = nil
  if s.runs ~= nil then
    for _, r in ipairs(s.runs) do
      if r.phase ~= "Running" then last = r end
    end
  end
  if last ~= nil and last.phase == "Failed" then
    return {status = "Degraded", message = "Run " .. last.name .. " failed: " .. (last.message or "")}
  end
  local msg = s.message or phase
  return {status = "Healthy", message = msg}
end
return {status = "Unknown", message = "Unknown FineTuneSchedule phase " .. tostring(phase)}
