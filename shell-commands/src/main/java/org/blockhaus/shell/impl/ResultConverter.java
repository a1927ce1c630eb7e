package org.blockhaus.shell.impl;

import org.apache.felix.service.command.Converter;
import org.osgi.service.component.annotations.Component;

/** Shows the commands' result objects in Gogo through the one renderer. */
@Component(service = Converter.class, property = "osgi.converter.classes=org.blockhaus.shell.impl.Results$Result")
public class ResultConverter implements Converter {
    @Override
    public Object convert(Class<?> desiredType, Object in) {
        return null;
    }

    @Override
    public CharSequence format(Object target, int level, Converter escape) {
        if (target instanceof Results.Result r) {
            String s = Render.render(r) + (r.error() == null ? "" : r.error() + "\n");
            return s.endsWith("\n") ? s.substring(0, s.length() - 1) : s;
        }
        return null;
    }
}
