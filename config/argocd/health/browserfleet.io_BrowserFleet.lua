-- Argo CD health check for browserfleet.io BrowserFleet.
--
-- Argo CD runs it with gopher-lua (Lua 5.1) and `obj` set to the live
-- object; tests/suite/gitops_health.rs runs it with Debian's lua5.1 against
-- fleets the operator wrote status for. It reads what the operator keeps
-- current: `status.observedGeneration` and the conditions `Ready`,
-- `Scaling` and `Degraded` (docs/operator.md).
local hs = {}

local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c)
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason
end

local generation = obj.metadata.generation or 0
if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to report status"
  return hs
end
if (obj.status.observedGeneration or 0) < generation then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. generation
  return hs
end

local degraded = condition("Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(degraded)
  return hs
end

local ready = condition("Ready")
if obj.spec ~= nil and obj.spec.paused then
  hs.status = "Suspended"
  if ready ~= nil then
    hs.message = describe(ready)
  else
    hs.message = "paused"
  end
  return hs
end

local scaling = condition("Scaling")
if scaling ~= nil and scaling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(scaling)
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end
hs.status = "Progressing"
if ready ~= nil then
  hs.message = describe(ready)
else
  hs.message = "waiting for the Ready condition"
end
return hs
