-- Argo CD health check for browserfleet.io BrowserSession.
--
-- Argo CD runs it with gopher-lua (Lua 5.1) and `obj` set to the live
-- object; tests/suite/gitops_health.rs runs it with Debian's lua5.1 against
-- sessions the operator wrote status for. A session is a job of sorts:
-- `Ready` is healthy, the way to it progressing, a session that ended by
-- its lifetime or by request healthy (done), one that failed or whose
-- browser crashed degraded.
local hs = {}

local function describe(status)
  local text = status.phase
  if status.reason ~= nil then
    text = text .. " (" .. status.reason .. ")"
  end
  if status.message ~= nil and status.message ~= "" then
    text = text .. ": " .. status.message
  end
  return text
end

if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to admit the session"
  return hs
end

local status = obj.status
local phase = status.phase
if phase == "Ready" then
  hs.status = "Healthy"
elseif phase == "Failed" then
  hs.status = "Degraded"
elseif phase == "Terminated" then
  if status.reason == "crashed" or status.reason == "failedToStart" then
    hs.status = "Degraded"
  else
    hs.status = "Healthy"
  end
else
  -- Pending, Starting, Terminating.
  hs.status = "Progressing"
end
hs.message = describe(status)
return hs
